"""Korean text normalisation and error rates (jiwer).

Two views of the same pairs, both applied to references and hypotheses alike:
  * raw: NFC, whitespace collapsed; spaces count as characters (Korean spacing errors are real errors);
  * normalised: a NormalizationPolicy (docs/NORMALISATION.md): punctuation, spacing and how numbers are written.

Captions write "0.1%" where a speaker says "영 점 일 프로", and Whisper may write either; without a numbers policy
every such pair counts as several character errors that no listener would call a mistake (the readings are in
asr_pipeline.core.korean_numbers).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import jiwer
import numpy as np

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.korean_numbers import numbers_to_digits, numbers_to_korean

# ---------------------------------------------------------------- policy

# what a caption writer types for a hyphen or a minus, as the model writes it: the minus sign, the full-width
# hyphen-minus, the hyphen, the non-breaking hyphen and the en dash (`–5도`, `09–18시`)
MINUS_SIGNS = str.maketrans({"\u2212": "-", "\uff0d": "-", "\u2010": "-", "\u2011": "-", "\u2013": "-"})
NUMBER_POLICIES = {"korean": numbers_to_korean, "digits": numbers_to_digits, "keep": lambda text: text}


@dataclass(frozen=True)
class NormalizationPolicy:
    """How references and hypotheses are made comparable before the normalised CER/WER.

    punctuation: "strip" (Unicode P*, and marks in So/Sk) or "keep";
    spacing: "ignore" (the normalised CER compares characters only) or "keep";
    numbers: "korean" (digits -> readings), "digits" (readings -> digits) or "keep".
    """

    punctuation: str = "strip"
    spacing: str = "ignore"
    numbers: str = "korean"

    def __post_init__(self) -> None:
        for name, allowed in (("punctuation", ("strip", "keep")), ("spacing", ("ignore", "keep")),
                              ("numbers", tuple(NUMBER_POLICIES))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"normalisation {name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r} (ASR_NORMALIZE_{name.upper()})")

    def words(self, text: str) -> str:
        """The policy with word boundaries kept (for WER)."""
        # the minus sign (U+2212), the en dash and the other hyphens are the hyphen-minus under every numbers policy;
        # numbers first: "1,500" and "0.1%" must be read before their punctuation goes
        text = NUMBER_POLICIES[self.numbers](clean(without_format_characters(text)).translate(MINUS_SIGNS))
        if self.punctuation == "strip":
            text = "".join(" " if _is_mark(ch) else ch for ch in text)
        return clean(text)

    def characters(self, text: str) -> str:
        """The policy as the normalised CER sees it."""
        return self.characters_of_words(self.words(text))

    def characters_of_words(self, words: str) -> str:
        """characters() from an already computed words(): scoring needs both views of every text."""
        return words.replace(" ", "") if self.spacing == "ignore" else words

    def describe(self) -> dict:
        return {"punctuation": self.punctuation, "spacing": self.spacing, "numbers": self.numbers}


def _is_mark(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category.startswith("P") or category in ("So", "Sk")


DEFAULT_POLICY = NormalizationPolicy()


def clean(text: str) -> str:
    """NFC and single spaces: the form references and hypotheses are stored and scored in (the label clean-up,
    manifest.clean_transcript, is this function)."""
    return " ".join(unicodedata.normalize("NFC", text or "").split())


def without_format_characters(text: str) -> str:
    """Without Unicode format characters (Cf: zero-width space U+200B, joiners, the byte-order mark U+FEFF): invisible
    in a caption, never written by the model, and inside "1\u200b500" they would split a number."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def normalize_for_cer(text: str, policy: NormalizationPolicy = DEFAULT_POLICY) -> str:
    return policy.characters(text)


# ---------------------------------------------------------------- error rates


@dataclass(frozen=True)
class ErrorRates:
    cer: float
    cer_normalized: float
    wer: float
    wer_normalized: float
    pairs: int

    def as_dict(self) -> dict:
        return {"cer": self.cer, "cer_normalized": self.cer_normalized, "wer": self.wer,
                "wer_normalized": self.wer_normalized, "pairs": self.pairs}


def character_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER: total character edits / total reference characters (jiwer), spaces counted."""
    if not references:
        return float("nan")
    return float(jiwer.cer(references, hypotheses))


@dataclass(frozen=True)
class EditCounts:
    """Per-utterance edits, reference lengths and insertions for the four measures, so corpus rates can be
    resampled (by utterance or by episode) and hallucinations counted."""

    edits: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    insertions: dict[str, np.ndarray] = field(default_factory=dict)

    def rate(self, measure: str, rows: np.ndarray | None = None) -> float:
        e, n = self.edits[measure], self.lengths[measure]
        if rows is not None:
            e, n = e[rows], n[rows]
        total = n.sum()
        return float(e.sum() / total) if total else float("nan")


def _edits(reference: str, hypothesis: str, unit: str) -> tuple[int, int, int]:
    """(edits, reference length, insertions) of one pair."""
    ref = list(reference) if unit == "char" else reference.split()
    hyp = list(hypothesis) if unit == "char" else hypothesis.split()
    if not ref:
        return len(hyp), 0, len(hyp)
    if not hyp:
        return len(ref), len(ref), 0
    out = jiwer.process_characters(reference, hypothesis) if unit == "char" else jiwer.process_words(reference,
                                                                                                     hypothesis)
    return out.substitutions + out.deletions + out.insertions, len(ref), out.insertions


MEASURES = ("cer", "cer_normalized", "wer", "wer_normalized")


def edit_counts(references: list[str], hypotheses: list[str],
                policy: NormalizationPolicy = DEFAULT_POLICY) -> EditCounts:
    edits = {m: np.zeros(len(references), dtype=np.int64) for m in MEASURES}
    lengths = {m: np.zeros(len(references), dtype=np.int64) for m in MEASURES}
    insertions = {m: np.zeros(len(references), dtype=np.int64) for m in MEASURES}
    for i, (r, h) in enumerate(zip(references, hypotheses)):
        r, h = clean(r), clean(h)
        r_words, h_words = policy.words(r), policy.words(h)
        views = {"cer": (r, h, "char"), "wer": (r, h, "word"),
                 "cer_normalized": (policy.characters_of_words(r_words), policy.characters_of_words(h_words), "char"),
                 "wer_normalized": (r_words, h_words, "word")}
        for measure, (ref, hyp, unit) in views.items():
            edits[measure][i], lengths[measure][i], insertions[measure][i] = _edits(ref, hyp, unit)
    return EditCounts(edits, lengths, insertions)


def error_rates(references: list[str], hypotheses: list[str],
                policy: NormalizationPolicy = DEFAULT_POLICY) -> ErrorRates:
    """Corpus rates (total edits / total reference units). References must be non-empty (rows with empty
    transcripts are quarantined before this point); a punctuation-only reference adds nothing to the normalised
    rates."""
    if any(not clean(r) for r in references):
        raise ValueError("error_rates needs non-empty references")
    counts = edit_counts(references, hypotheses, policy)
    return ErrorRates(*(counts.rate(m) for m in MEASURES), pairs=len(references))


def bootstrap_ci(counts: EditCounts, measure: str, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap over utterances of a corpus rate: [lo, hi]."""
    n = len(counts.edits[measure])
    if n == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    edits, lengths = counts.edits[measure], counts.lengths[measure]
    rates = []
    chunk = max(1, 2_000_000 // n)  # resamples drawn a chunk at a time: memory stays bounded for big test splits
    for start in range(0, resamples, chunk):
        rows = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        rates.append(edits[rows].sum(axis=1) / np.maximum(lengths[rows].sum(axis=1), 1))
    rates = np.concatenate(rates)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(rates, tail)), float(np.percentile(rates, 100 - tail))]


# ---------------------------------------------------------------- paired comparison, resampling episodes

RESAMPLE_CELLS = 2_000_000  # resamples x episodes drawn at once: memory stays bounded for big test splits


def episode_codes(groups) -> np.ndarray:
    """Each utterance's episode as an integer 0..G-1 (the manifest's `group` column)."""
    return np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1].reshape(-1)


def _per_episode(values: np.ndarray, codes: np.ndarray, episodes: int) -> np.ndarray:
    return np.bincount(codes, weights=values.astype(np.float64), minlength=episodes)


def paired_episode_bootstrap(challenger: EditCounts, incumbent: EditCounts, groups, measure: str = "cer_normalized",
                             resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """challenger − incumbent corpus rate, with a percentile interval from a paired bootstrap over episodes.

    Clips of one episode share a speaker, a topic and a recording, so their errors are not independent: resampling
    utterances would make the interval too narrow. Each resample draws G episodes with replacement (G = episodes in
    the test split) and computes both models' ratio-of-sums rates on the same draw, so what both models find hard
    cancels out of the difference. With fewer than two episodes there is nothing to resample: the interval is NaN.
    """
    codes = episode_codes(groups)
    episodes = int(codes.max()) + 1 if len(codes) else 0
    sums = [_per_episode(c.edits[measure], codes, episodes) for c in (challenger, incumbent)] + \
           [_per_episode(c.lengths[measure], codes, episodes) for c in (challenger, incumbent)]
    edits_a, edits_b, lengths_a, lengths_b = sums
    difference = challenger.rate(measure) - incumbent.rate(measure)
    out = {"difference": float(difference), "ci95": [float("nan"), float("nan")], "measure": measure,
           "unit": "episode", "episodes": episodes, "utterances": int(len(codes)), "resamples": resamples,
           "level": level}
    if episodes < 2 or difference != difference:
        return out
    rng = np.random.default_rng(seed)
    chunk = max(1, RESAMPLE_CELLS // episodes)
    differences = []
    for start in range(0, resamples, chunk):
        drawn = rng.integers(0, episodes, size=(min(chunk, resamples - start), episodes))
        rate_a = edits_a[drawn].sum(axis=1) / np.maximum(lengths_a[drawn].sum(axis=1), 1)
        rate_b = edits_b[drawn].sum(axis=1) / np.maximum(lengths_b[drawn].sum(axis=1), 1)
        differences.append(rate_a - rate_b)
    differences = np.concatenate(differences)
    tail = (1 - level) / 2 * 100
    out["ci95"] = [float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))]
    return out
