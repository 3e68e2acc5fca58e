"""Korean text normalisation and error rates (jiwer).

Two views of the same pairs, both applied to references and hypotheses alike:
  * raw: NFC, whitespace collapsed; spaces count as characters (Korean spacing errors are real errors);
  * normalised: a NormalizationPolicy (docs/NORMALISATION.md): punctuation, spacing and how numbers are written.

Captions write "0.1%" where a speaker says "영 점 일 프로", and Whisper may write either; without a numbers policy
every such pair counts as several character errors that no listener would call a mistake.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import jiwer
import numpy as np

from asr_pipeline.core.errors import ConfigError

# ---------------------------------------------------------------- numbers: digits -> Korean readings

SINO_DIGITS = "영일이삼사오육칠팔구"
SMALL_UNITS = ((1000, "천"), (100, "백"), (10, "십"))
LARGE_UNITS = ((10**16, "경"), (10**12, "조"), (10**8, "억"), (10**4, "만"))
# Counters read with native Korean numbers ("3시" is "세 시", "2명" is "두 명"); other counters read Sino-Korean.
NATIVE_COUNTERS = ("시간", "시", "개", "명", "살", "마리", "잔", "권", "척", "대")
NATIVE_ONES = ["", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉"]
NATIVE_TENS = ["", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔"]
PERCENT_WORDS = ("퍼센트", "프로")  # both are said on air; the policy writes 프로

_NUMBER = re.compile(r"(?<![\d.])(-?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s*%)?")
_NATIVE = re.compile(r"(?<![\d.,])(\d{1,2})(\s*)(" + "|".join(NATIVE_COUNTERS) + r")(?![\d])")


def _sino_below_10000(n: int) -> str:
    out = []
    for value, unit in SMALL_UNITS:
        digit, n = divmod(n, value)
        if digit:
            out.append(("" if digit == 1 else SINO_DIGITS[digit]) + unit)
    if n:
        out.append(SINO_DIGITS[n])
    return "".join(out)


def sino_korean(n: int) -> str:
    """12345 -> 만이천삼백사십오 (Sino-Korean reading, grouped by 10^4 as Korean is)."""
    if n == 0:
        return "영"
    out = []
    for value, unit in LARGE_UNITS:
        group, n = divmod(n, value)
        if group:
            out.append(("" if group == 1 and unit == "만" else _sino_below_10000(group)) + unit)
    if n:
        out.append(_sino_below_10000(n))
    return " ".join(out)


def native_korean(n: int) -> str:
    """1..99 -> attributive native reading (한, 두, 스무, 서른두...)."""
    tens, ones = divmod(n, 10)
    if tens == 2 and ones == 0:
        return "스무"
    return NATIVE_TENS[tens] + NATIVE_ONES[ones]


def _read_number(match: re.Match) -> str:
    sign, integer, fraction, percent = match.groups()
    words = ["마이너스"] if sign else []
    words.append(sino_korean(int(integer.replace(",", ""))))
    if fraction:
        words += ["점"] + [SINO_DIGITS[int(d)] for d in fraction]
    if percent:
        words.append("프로")
    return " " + " ".join(words) + " "


def numbers_to_korean(text: str) -> str:
    """Write every number as it is read: native before counters (3시 -> 세 시), Sino-Korean otherwise
    (0.1% -> 영 점 일 프로, 1,500 -> 천오백); 퍼센트 becomes 프로."""
    text = _NATIVE.sub(lambda m: f" {native_korean(int(m.group(1)))} {m.group(3)}" if int(m.group(1)) else m.group(0),
                       text)
    text = _NUMBER.sub(_read_number, text)
    return re.sub(r"퍼센트", "프로", text)


# ---------------------------------------------------------------- numbers: Korean readings -> digits

_SINO_VALUE = {ch: i for i, ch in enumerate(SINO_DIGITS)} | {"공": 0}
_SMALL_VALUE = {unit: value for value, unit in SMALL_UNITS}
_LARGE_VALUE = {unit: value for value, unit in LARGE_UNITS}
_NUMBER_WORD = re.compile(r"^[영공일이삼사오육칠팔구십백천만억조경]+$")


def parse_sino_korean(word: str) -> int | None:
    """만이천삼백사십오 -> 12345; None when the word is not a well-formed Sino-Korean number."""
    if not _NUMBER_WORD.match(word):
        return None
    total, group, digit = 0, 0, None
    for ch in word:
        if ch in _SINO_VALUE:
            if digit is not None:
                return None  # two digits in a row ("이삼") is a digit string, not a number reading
            digit = _SINO_VALUE[ch]
        elif ch in _SMALL_VALUE:
            group += (1 if digit is None else digit) * _SMALL_VALUE[ch]
            digit = None
        else:
            total += max(group + (digit or 0), 1) * _LARGE_VALUE[ch]
            group, digit = 0, None
    return total + group + (digit or 0)


def _is_number_word(token: str) -> bool:
    # One syllable alone ("이", "사", "오") is far more often a word than a number: only longer readings, or a
    # reading that names a unit (십, 백, ...), count on their own; single digits count next to 점 or 프로.
    return parse_sino_korean(token) is not None and (len(token) > 1 or token in _SMALL_VALUE or token in _LARGE_VALUE)


def numbers_to_digits(text: str) -> str:
    """The reverse policy: 영 점 일 프로 -> 0.1%, 삼백 -> 300, 퍼센트/프로 after a number -> %. Conservative:
    ambiguous single syllables stay words unless 점 or a percent word makes them numeric."""
    tokens = text.split()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        value = parse_sino_korean(token)
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        numeric = value is not None and (_is_number_word(token) or nxt == "점" or nxt in PERCENT_WORDS)
        if not numeric:
            out.append(token)
            i += 1
            continue
        i += 1
        # "만 이천삼백" is one number written in two words (Korean spaces after 만, 억, 조)
        while token[-1] in _LARGE_VALUE and i < len(tokens) and parse_sino_korean(tokens[i]) is not None \
                and parse_sino_korean(tokens[i]) < _LARGE_VALUE[token[-1]]:
            token = tokens[i]
            value += parse_sino_korean(token)
            i += 1
        written = str(value)
        if i < len(tokens) and tokens[i] == "점":
            digits = []
            j = i + 1
            while j < len(tokens) and len(tokens[j]) == 1 and tokens[j] in _SINO_VALUE:
                digits.append(str(_SINO_VALUE[tokens[j]]))
                j += 1
            if digits:
                written += "." + "".join(digits)
                i = j
        if i < len(tokens) and tokens[i] in PERCENT_WORDS:
            written += "%"
            i += 1
        out.append(written)
    return " ".join(out)


# ---------------------------------------------------------------- policy

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
        # numbers first: "1,500" and "0.1%" must be read before their punctuation goes
        text = NUMBER_POLICIES[self.numbers](clean(text))
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
    """NFC and single spaces: the form references and hypotheses are stored and scored in."""
    return " ".join(unicodedata.normalize("NFC", text or "").split())


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
