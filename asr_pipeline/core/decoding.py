"""Decoding as deployed: nothing from the reference reaches the decoder.

Utterances are decoded in order of audio duration (so a batch holds clips of similar length), each batch may
generate at most `tokens_per_second` x its longest clip's duration + `token_allowance` tokens (never more than
444, Whisper's 448 positions minus the 4-token Korean/transcribe prefix), and Whisper's own guards apply, as
faster-whisper applies them in service:
- temperature fallback: a greedy result whose text compresses more than `compression_ratio_threshold` (a repetition
  loop) or whose mean token log-probability is below `logprob_threshold` is decoded again by sampling at the next
  temperature; when every temperature fails, the best result is kept (highest mean log-probability, preferring
  results under the compression threshold);
- no-speech: a result whose <|nospeech|> probability exceeds `no_speech_threshold` while its mean log-probability is
  below `logprob_threshold` is silence and transcribes to "".
The policy logic lives here once; transformers_decoding.transcribe_features runs it on transformers and
export.transcribe_features_ct2 on CTranslate2, so the report, `transcribe` and the deployable export decode alike.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

from asr_pipeline.core.progress import Progress

MAX_NEW_TOKENS = 444  # 448 target positions minus <|startoftranscript|><|ko|><|transcribe|><|notimestamps|>
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class DecodingPolicy:
    """Defaults are faster-whisper's (compression 2.4, log-prob -1.0, no-speech 0.6, temperatures 0 to 1 by 0.2),
    except best_of (faster-whisper samples 5 per fallback temperature; 1 here keeps the report's cost bounded)."""

    max_new_tokens: int = MAX_NEW_TOKENS
    # Whisper's tokenizer spends at most ~1.04 tokens per Korean syllable (0.77 on average, measured on the demo
    # corpus); fast broadcast speech stays under ~10 syllables/s: 12 tokens/s leaves room (docs/EVALUATION.md).
    tokens_per_second: float = 12.0
    token_allowance: int = 16
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    best_of: int = 1
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if self.tokens_per_second <= 0 or self.token_allowance < 0 or self.batch_size < 1 or self.best_of < 1:
            raise ValueError("tokens_per_second must be > 0, token_allowance >= 0, batch_size and best_of >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be a non-empty list of values >= 0, got {self.temperatures}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))

    def budget(self, seconds: float) -> int:
        """New tokens an utterance of this duration may generate."""
        return max(1, min(self.max_new_tokens,
                          math.ceil(self.tokens_per_second * max(seconds, 0.0)) + self.token_allowance))

    def describe(self) -> dict:
        """What the report records, and part of the hypothesis cache's key."""
        return {**asdict(self), "temperatures": list(self.temperatures), "order": "longest audio first",
                "token_budget": f"min({self.max_new_tokens}, ceil({self.tokens_per_second:g} x audio seconds) + "
                                f"{self.token_allowance}), per batch", "reference_used": False}


GREEDY_ONLY = DecodingPolicy(temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None,
                             no_speech_threshold=None)


@dataclass
class Candidate:
    """One decoded text with the statistics the guards look at."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float = field(init=False)

    def __post_init__(self):
        self.compression_ratio = compression_ratio(self.text)


def compression_ratio(text: str) -> float:
    """UTF-8 bytes / zlib-compressed bytes, as faster-whisper and openai-whisper compute it (a loop compresses well)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def is_silence(c: Candidate, policy: DecodingPolicy) -> bool:
    return (policy.no_speech_threshold is not None and policy.logprob_threshold is not None
            and c.no_speech_prob > policy.no_speech_threshold and c.avg_logprob < policy.logprob_threshold)


def needs_fallback(c: Candidate, policy: DecodingPolicy) -> bool:
    if is_silence(c, policy):
        return False
    too_repetitive = policy.compression_ratio_threshold is not None and \
        c.compression_ratio > policy.compression_ratio_threshold
    too_unlikely = policy.logprob_threshold is not None and c.avg_logprob < policy.logprob_threshold
    return too_repetitive or too_unlikely


def final_choice(tried: list[Candidate], policy: DecodingPolicy) -> Candidate:
    """The last candidate when it passed; else faster-whisper's rule: the most likely of those under the
    compression threshold (or of all)."""
    if not needs_fallback(tried[-1], policy):
        return tried[-1]
    threshold = policy.compression_ratio_threshold
    under = [c for c in tried if threshold is None or c.compression_ratio <= threshold]
    return max(under or tried, key=lambda c: c.avg_logprob)


class Runtime(Protocol):
    """A model that decodes a batch of chosen utterances at one temperature (best_of samples when > 0)."""

    def decode(self, chosen: list[int], temperature: float, max_new_tokens: int, best_of: int,
               seed: int) -> list[Candidate]: ...


def duration_batches(durations: Sequence[float], policy: DecodingPolicy) -> Iterator[tuple[list[int], int]]:
    """(utterance indices, token budget) per batch: longest audio first, the budget of the batch's longest clip."""
    order = sorted(range(len(durations)), key=lambda i: (-float(durations[i]), i))
    for start in range(0, len(order), policy.batch_size):
        chosen = order[start: start + policy.batch_size]
        yield chosen, policy.budget(max(float(durations[i]) for i in chosen))


@dataclass
class DecodeResult:
    texts: list[str]
    temperatures: list[float]  # the temperature of each kept text (0.0: greedy passed)
    silent: list[bool]  # judged silence by the no-speech guard (text "")
    passes: list[int] = field(default_factory=list)  # decoding passes each clip took (1: greedy passed)

    def stats(self) -> dict:
        n = max(len(self.texts), 1)
        stats = {"fallback_share": sum(t > 0 for t in self.temperatures) / n, "no_speech_share": sum(self.silent) / n}
        if self.passes:  # what a decode cost: the kept temperature alone does not say how many were tried
            stats["mean_passes"] = sum(self.passes) / n
        return stats


def guarded_decode(runtime: Runtime, durations: Sequence[float], policy: DecodingPolicy,
                   emit: Callable[[str], None] = print, what: str = "decoding") -> DecodeResult:
    """Runs the policy on any runtime; returns texts in input order."""
    count = len(durations)
    texts, temps, silent, passes = [""] * count, [0.0] * count, [False] * count, [0] * count
    progress = Progress(what, count, emit)
    for batch_number, (chosen, budget) in enumerate(duration_batches(durations, policy)):
        tried: dict[int, list[Candidate]] = {i: [] for i in chosen}
        pending = list(chosen)
        for step, temperature in enumerate(policy.temperatures):
            seed = policy.seed + 1000 * batch_number + step
            for i, candidate in zip(pending, runtime.decode(pending, temperature, budget, policy.best_of, seed)):
                tried[i].append(candidate)
            pending = [i for i in pending if needs_fallback(tried[i][-1], policy)]
            if not pending:
                break
        for i in chosen:
            kept = final_choice(tried[i], policy)
            silent[i] = is_silence(kept, policy)
            texts[i], temps[i], passes[i] = ("" if silent[i] else kept.text), kept.temperature, len(tried[i])
        progress.advance(len(chosen))
    return DecodeResult(texts, temps, silent, passes)
