"""Korean text normalisation and error rates (jiwer).

Two views of the same pairs:
  * raw: NFC, whitespace collapsed; spaces count as characters (Korean spacing errors are real errors);
  * normalised: punctuation and all whitespace removed, so only the spoken characters are compared.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import jiwer


def clean(text: str) -> str:
    """NFC and single spaces: the form references and hypotheses are stored and scored in."""
    return " ".join(unicodedata.normalize("NFC", text or "").split())


def normalize_for_cer(text: str) -> str:
    """Drop punctuation (Unicode P*), symbols that are only marks (S* except currency/math), and whitespace."""
    kept = []
    for ch in clean(text):
        category = unicodedata.category(ch)
        if category.startswith("P") or ch.isspace() or category in ("So", "Sk"):
            continue
        kept.append(ch)
    return "".join(kept)


@dataclass(frozen=True)
class ErrorRates:
    cer: float
    cer_normalized: float
    wer: float
    pairs: int

    def as_dict(self) -> dict:
        return {"cer": self.cer, "cer_normalized": self.cer_normalized, "wer": self.wer, "pairs": self.pairs}


def character_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER: total character edits / total reference characters (jiwer), spaces counted."""
    if not references:
        return float("nan")
    return float(jiwer.cer(references, hypotheses))


def error_rates(references: list[str], hypotheses: list[str]) -> ErrorRates:
    """references must be non-empty strings (rows with empty transcripts are quarantined before this point)."""
    refs = [clean(r) for r in references]
    hyps = [clean(h) for h in hypotheses]
    if any(not r for r in refs):
        raise ValueError("error_rates needs non-empty references")
    norm_pairs = [(normalize_for_cer(r), normalize_for_cer(h)) for r, h in zip(refs, hyps)]
    norm_pairs = [(r, h) for r, h in norm_pairs if r]  # a punctuation-only reference has nothing to score
    return ErrorRates(
        cer=character_error_rate(refs, hyps),
        cer_normalized=character_error_rate([r for r, _ in norm_pairs], [h for _, h in norm_pairs]),
        wer=float(jiwer.wer(refs, hyps)) if refs else float("nan"),
        pairs=len(refs),
    )
