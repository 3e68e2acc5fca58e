"""Hallucination measures of one model's decodes: text the audio does not hold.

Whisper fails in a few recognisable ways that a corpus CER averages away: it repeats a phrase until its token budget
runs out, it invents a sentence over silence or music, or it returns nothing. Per model the report counts:

- insertion_rate: inserted characters / reference characters (normalised CER's alignment);
- cer_above_1: share of utterances with more edits than reference characters (only insertions get there);
- repetition: share of hypotheses whose zlib compression ratio is above 2.4, Whisper's own repetition threshold
  (a phrase said over and over compresses well; ordinary Korean sentences compress to ~1);
- empty: share of empty hypotheses;
- hallucination_share: share of utterances with CER above 1 or a repetition, what the promotion gate compares.
"""

from __future__ import annotations

import zlib

import numpy as np

from asr_pipeline.core.text import EditCounts

COMPRESSION_RATIO_THRESHOLD = 2.4  # openai/whisper's compression_ratio_threshold
MEASURE = "cer_normalized"


def compression_ratio(text: str) -> float:
    """UTF-8 bytes / zlib-compressed bytes, as openai/whisper computes it; 0 for an empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def hallucination_flags(counts: EditCounts, hypotheses: list[str]) -> dict[str, np.ndarray]:
    """Per-utterance booleans: cer_above_1, repetition, empty, hallucinated (the first or the second)."""
    edits, lengths = counts.edits[MEASURE], counts.lengths[MEASURE]
    cer_above_1 = edits > lengths  # a reference with nothing to compare (length 0) and any output counts too
    repetition = np.array([compression_ratio(h) > COMPRESSION_RATIO_THRESHOLD for h in hypotheses], dtype=bool)
    empty = np.array([not h.strip() for h in hypotheses], dtype=bool)
    return {"cer_above_1": cer_above_1, "repetition": repetition, "empty": empty,
            "hallucinated": cer_above_1 | repetition}


def hallucination_stats(counts: EditCounts, hypotheses: list[str]) -> dict:
    """The report's `hallucination` entry of one model."""
    n = len(hypotheses)
    flags = hallucination_flags(counts, hypotheses)
    total = counts.lengths[MEASURE].sum()
    inserted = counts.insertions[MEASURE].sum() if counts.insertions else 0

    def share(name: str) -> float:
        return float(flags[name].mean()) if n else float("nan")

    return {"insertion_rate": float(inserted / total) if total else float("nan"),
            "cer_above_1": share("cer_above_1"), "repetition": share("repetition"), "empty": share("empty"),
            "hallucination_share": share("hallucinated"), "hallucinated_utterances": int(flags["hallucinated"].sum()),
            "utterances": n, "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD}
