"""Where the errors are, for the report: rates by duration bucket and by programme, and the worst utterances with
their character alignment."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from asr_pipeline.core.settings import DEFAULT_PROGRAMME_PATTERN

DURATION_BUCKETS = (0.0, 2.0, 5.0, 10.0, 20.0, 30.0)
WORST_COUNT = 20


def duration_bucket(seconds: float) -> str:
    for lo, hi in zip(DURATION_BUCKETS, DURATION_BUCKETS[1:]):
        if seconds < hi:
            return f"{lo:g}-{hi:g} s"
    return f">={DURATION_BUCKETS[-1]:g} s"


def programme_of(group: str, pattern: str = DEFAULT_PROGRAMME_PATTERN) -> str:
    match = re.match(pattern, str(group))
    return match.group("programme") if match else "(unknown)"


def breakdown(labels: list[str], counts_by_model: dict, order: Sequence[str] | None = None) -> list[dict]:
    """CER and normalised CER of each model within each label (duration bucket, programme)."""
    labels_arr = np.asarray(labels)
    rows = []
    for label in order or sorted(set(labels)):
        chosen = np.flatnonzero(labels_arr == label)
        if len(chosen) == 0:
            continue
        row = {"bucket": label, "utterances": int(len(chosen))}
        for name, counts in counts_by_model.items():
            row[f"{name}_cer"] = counts.rate("cer", chosen)
            row[f"{name}_cer_normalized"] = counts.rate("cer_normalized", chosen)
        rows.append(row)
    return rows


def character_alignment(reference: str, hypothesis: str) -> list[dict]:
    """jiwer's character alignment as a list of {op: equal|substitute|delete|insert, ref, hyp} pieces."""
    import jiwer

    if not reference or not hypothesis:
        return [{"op": "delete", "ref": reference, "hyp": ""}] if reference else \
            ([{"op": "insert", "ref": "", "hyp": hypothesis}] if hypothesis else [])
    out = jiwer.process_characters(reference, hypothesis)
    pieces = []
    for chunk in out.alignments[0]:
        pieces.append({"op": chunk.type, "ref": reference[chunk.ref_start_idx:chunk.ref_end_idx],
                       "hyp": hypothesis[chunk.hyp_start_idx:chunk.hyp_end_idx]})
    return pieces


def worst_utterances(per_utterance: list[dict], counts, model: str = "finetuned",
                     count: int = WORST_COUNT) -> list[dict]:
    """The utterances with the highest CER (then the most edits) for `model`, each with its aligned diff."""
    edits, lengths = counts.edits["cer"], counts.lengths["cer"]
    rates = edits / np.maximum(lengths, 1)
    order = sorted(range(len(per_utterance)), key=lambda i: (-rates[i], -edits[i], per_utterance[i]["id"]))
    out = []
    for i in order[:count]:
        u = per_utterance[i]
        out.append({"id": u["id"], "audio_path": u["audio_path"], "duration": u["duration"],
                    "programme": u["programme"], "cer": float(rates[i]), "edits": int(edits[i]),
                    "reference": u["reference"], "hypothesis": u[f"{model}_hypothesis"],
                    "diff": character_alignment(u["reference"], u[f"{model}_hypothesis"])})
    return out
