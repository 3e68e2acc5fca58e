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
The policy logic lives here once; `transcribe_features` runs it on transformers and export.transcribe_features_ct2
on CTranslate2, so the report, `transcribe` and the deployable export decode alike.
"""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from asr_pipeline.core.model import LANGUAGE, TASK
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.text import clean

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


# ---------------------------------------------------------------- transformers


class TransformersRuntime:
    """WhisperForConditionalGeneration, decoded step by step with a key/value cache (what `generate` does for Whisper,
    with its token suppression rules), plus what the guards need, read from the same forward passes: the mean
    log-probability of the tokens and <|endoftext|> under the unmodified logits, and P(<|nospeech|>) after
    <|startoftranscript|>, as openai-whisper and CTranslate2 compute them.

    Why not `generate`: it keeps decoding every row of a batch until the last one ends, and the guards then needed a
    second, teacher-forced pass. Here a row leaves the batch when it emits <|endoftext|> (a base model that babbles
    on one clip no longer holds up fifteen finished ones), the statistics come from the decoding passes themselves,
    and the encoder states and cross-attention keys/values of a batch are computed once for every temperature.
    In float32 its greedy tokens equal `generate`'s (asr_pipeline_tests/core/test_decoding.py); in bf16/fp16 a batch
    that shrinks as rows end may round a near-tie differently."""

    def __init__(self, model, processor, features: Callable[[int], np.ndarray]):
        self.model, self.tokenizer, self.features = model, processor.tokenizer, features
        gc = model.generation_config
        self.eot = int(gc.eos_token_id if not isinstance(gc.eos_token_id, list) else gc.eos_token_id[0])
        language = self.tokenizer.convert_tokens_to_ids(f"<|{_language_code()}|>")
        self.prompt = [int(gc.decoder_start_token_id), int(language), int(gc.task_to_id[TASK]),
                       int(gc.no_timestamps_token_id)]
        nospeech = self.tokenizer.convert_tokens_to_ids("<|nospeech|>")
        self.no_speech = int(nospeech) if isinstance(nospeech, int) and nospeech != self.tokenizer.unk_token_id \
            else int(gc.no_timestamps_token_id) - 1
        # generate's rules for Whisper: suppress_tokens at every step, begin_suppress_tokens (" " and <|endoftext|>)
        # at the first generated position
        # (ids outside the vocabulary are skipped, as generate skips them). Other generation_config options
        # (repetition_penalty, no_repeat_ngram_size, top_k/top_p) are not applied: Whisper's configs set none of them.
        vocabulary = int(model.config.vocab_size)
        self.suppress = [int(t) for t in (gc.suppress_tokens or []) if 0 <= int(t) < vocabulary]
        self.begin_suppress = [int(t) for t in (getattr(gc, "begin_suppress_tokens", None) or [])
                               if 0 <= int(t) < vocabulary]
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        model.eval()
        # the batch being decoded: its utterance indices, encoder states and each decoder layer's cross-attention keys
        # and values, computed once for the greedy pass and every fallback temperature
        self._encoded: tuple[tuple[int, ...], object, list] | None = None
        # transformers renamed past_key_values to cache during 5.x; the project allows any 5.x
        self._masks = None  # (every step, first step) suppression masks over the vocabulary, made on first use
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _encode(self, chosen: list[int]):
        """(encoder states, cross-attention keys/values per decoder layer) of the chosen utterances, in that order.
        Without the cached keys/values each temperature pass would project the 1500 encoder positions again in each
        decoder layer (about a tenth of the encoder's work each time, in float32)."""
        import torch

        key = tuple(chosen)
        if self._encoded is None or not set(key) <= set(self._encoded[0]):
            batch = torch.from_numpy(np.stack([self.features(i) for i in chosen]))
            with torch.inference_mode():
                hidden = self.model.model.encoder(batch.to(device=self.device, dtype=self.dtype)).last_hidden_state
                cross = [self._cross_key_value(layer.encoder_attn, hidden) for layer in self.model.model.decoder.layers]
            self._encoded = (key, hidden, cross)
        keys, hidden, cross = self._encoded
        if key == keys:
            return hidden, cross
        rows = torch.tensor([keys.index(i) for i in chosen], device=hidden.device)
        return hidden[rows], [(k[rows], v[rows]) for k, v in cross]

    @staticmethod
    def _cross_key_value(attention, hidden):
        """What WhisperAttention computes for cross-attention before caching it: [batch, heads, positions, head_dim]."""
        shape = (hidden.shape[0], -1, attention.num_heads, attention.head_dim)
        return (attention.k_proj(hidden).view(shape).transpose(1, 2).contiguous(),
                attention.v_proj(hidden).view(shape).transpose(1, 2).contiguous())

    @staticmethod
    def _cache(cross, repeats: int = 1):
        """A fresh decoder cache whose cross-attention part is already filled (the model then skips recomputing it)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if repeats > 1:
            cross = [(k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0)) for k, v in cross]
        return EncoderDecoderCache(DynamicCache(), DynamicCache(cross))

    def _forward(self, hidden, cache, ids):
        from transformers.modeling_outputs import BaseModelOutput

        return self.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=ids,
                          use_cache=True, **{self._cache_kwarg: cache}).logits.float()

    def decode(self, chosen, temperature, max_new_tokens, best_of, seed):
        import torch

        hidden, cross = self._encode(chosen)
        samples = best_of if temperature > 0 else 1
        if samples > 1:
            hidden = hidden.repeat_interleave(samples, dim=0)
        generator = torch.Generator(device=self.device).manual_seed(seed) if temperature > 0 else None
        with torch.inference_mode():
            tokens, logprob_sums, no_speech, ended = self._generate(hidden, self._cache(cross, samples), temperature,
                                                                    max_new_tokens, generator)
        # mean log-probability as faster-whisper reads CTranslate2's score: the tokens (and <|endoftext|> when the text
        # ended; a text cut by the budget has none to score) summed, divided by the token count + 1
        candidates = [Candidate(clean(self.tokenizer.decode(t, skip_special_tokens=True)), s / (len(t) + 1), ns,
                                temperature) for t, s, ns in zip(tokens, logprob_sums, no_speech)]
        return [max(candidates[k * samples:(k + 1) * samples], key=lambda c: c.avg_logprob)
                for k in range(len(chosen))]

    def _generate(self, hidden, cache, temperature: float, max_new_tokens: int, generator):
        """(tokens without <|endoftext|>, summed log-probabilities, P(<|nospeech|>), ended) per row."""
        import torch

        rows = hidden.shape[0]
        ids = torch.tensor([self.prompt] * rows, dtype=torch.long, device=self.device)
        logits = self._forward(hidden, cache, ids)
        lse = logits[:, 0].logsumexp(dim=-1)
        no_speech = (logits[:, 0, self.no_speech] - lse).exp().tolist()
        logits = logits[:, -1]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        sums, ended = [0.0] * rows, [False] * rows
        active = list(range(rows))  # the rows still decoding, in the order of the cache's batch dimension
        for step in range(max_new_tokens):
            chosen = self._choose(logits, temperature, generator, first=step == 0)
            logprobs = logits.gather(1, chosen[:, None])[:, 0] - logits.logsumexp(dim=-1)
            # one copy to the host a step (token ids are exact in float64)
            picked = torch.stack([chosen.double(), logprobs.double()], dim=1).tolist()
            keep = []
            for position, (row, (token, logprob)) in enumerate(zip(active, picked)):
                token = int(token)
                sums[row] += logprob
                if token == self.eot:
                    ended[row] = True
                else:
                    tokens[row].append(token)
                    keep.append(position)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(active):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                hidden, chosen = hidden[index], chosen[index]
                active = [active[p] for p in keep]
            logits = self._forward(hidden, cache, chosen[:, None])[:, -1]
        return tokens, sums, no_speech, ended

    def _choose(self, logits, temperature: float, generator, first: bool):
        """The next token of each row: generate's suppression, then argmax (greedy) or a sample at the temperature."""
        import torch

        if self._masks is None:  # made once: the hot loop only applies them
            masks = []
            for ids in (self.suppress, self.suppress + self.begin_suppress):
                mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
                mask[ids] = True
                masks.append(mask)
            self._masks = tuple(masks)
        scores = logits.masked_fill(self._masks[1 if first else 0], -float("inf"))
        if temperature == 0:
            return scores.argmax(dim=-1)
        probabilities = torch.softmax(scores / temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator)[:, 0]


def _language_code() -> str:
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE[LANGUAGE.lower()]


def transcribe_features(
    model,
    processor,
    features: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    durations: Sequence[float],
    policy: DecodingPolicy = DecodingPolicy(),
    emit: Callable[[str], None] = print,
    what: str = "decoding",
) -> DecodeResult:
    """features: padded [n_mels, 3000] inputs, or a function i -> input; durations: each clip's audio seconds."""
    get = features if callable(features) else features.__getitem__
    return guarded_decode(TransformersRuntime(model, processor, get), durations, policy, emit, what)


def transcribe_clips(model, processor, clips: Sequence[np.ndarray], policy: DecodingPolicy = DecodingPolicy(),
                     emit=print) -> DecodeResult:
    """16 kHz mono clips (any length up to 30 s) to text, with which guard decided each."""
    extractor = processor.feature_extractor

    def features(i: int) -> np.ndarray:
        return extractor(clips[i], sampling_rate=extractor.sampling_rate, return_tensors="np").input_features[0]

    durations = [min(len(c), 30 * SAMPLE_RATE) / SAMPLE_RATE for c in clips]
    return transcribe_features(model, processor, features, durations, policy, emit, "transcribing")


def transcribe_audio(model, processor, clips: Sequence[np.ndarray], policy: DecodingPolicy = DecodingPolicy(),
                     emit=print) -> list[str]:
    """16 kHz mono clips (any length up to 30 s) to text ("" where the no-speech guard found silence)."""
    return transcribe_clips(model, processor, clips, policy, emit).texts
