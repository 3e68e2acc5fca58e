"""The evaluation report: base model vs fine-tuned checkpoint on the test split, as JSON and Markdown."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from asr_pipeline.core.decoding import transcribe_features
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.storage import write_json
from asr_pipeline.core.text import clean, error_rates
from asr_pipeline.core.training import FeatureRows


def evaluate_on_test(
    base_source: str,
    checkpoint_dir: str,
    shards: Sequence[FeatureShard],
    out_dir: Path,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    warning: str | None = None,
    emit: Callable[[str], None] = print,
    budget_from_labels: bool = True,
) -> dict:
    """Decode the test split with both models, score with jiwer, write report.json and report.md to out_dir.

    budget_from_labels: decode longest-first with a token budget of 2x the reference label length + 10 per batch
    (see decoding.transcribe_features); off, every utterance may run to max_new_tokens."""
    from asr_pipeline.core.model import load_model, load_processor

    rows = FeatureRows(shards, "test")
    if len(rows) == 0:
        raise ValueError("the test split is empty: nothing to evaluate on (check ASR_SPLIT_RATIOS and the data)")

    def features(i: int):
        s, j = rows.positions[i]
        return rows.shards[s].features(j)

    meta = [rows.row(i) for i in range(len(rows))]
    references = [clean(m["transcript"]) for m in meta]
    expected = [int(m["label_length"]) for m in meta] if budget_from_labels else None
    report: dict = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "test_rows": len(rows),
        "base_model": base_source,
        "finetuned_model": str(checkpoint_dir),
        "warning": warning,
        "decoding": {"greedy": True, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                     "token_budget": "2 x reference label length + 10, longest first" if budget_from_labels
                     else "max_new_tokens"},
    }
    hypotheses = {}
    for name, source in (("base", base_source), ("finetuned", str(checkpoint_dir))):
        model, processor = load_model(source), load_processor(source)
        started = time.perf_counter()
        hypotheses[name] = transcribe_features(model, processor, features, count=len(rows), batch_size=batch_size,
                                               max_new_tokens=max_new_tokens, emit=emit, what=f"decoding ({name})",
                                               expected_tokens=expected)
        seconds = time.perf_counter() - started
        rates = error_rates(references, hypotheses[name])
        report[name] = {**rates.as_dict(), "model": source, "decode_seconds": round(seconds, 3),
                        "utterances_per_s": round(len(rows) / seconds, 3)}
        del model
    report["per_utterance"] = [
        {"id": int(m["id"]), "audio_path": m["audio_path"], "reference": ref,
         "base_hypothesis": hypotheses["base"][i], "finetuned_hypothesis": hypotheses["finetuned"][i],
         "duration": round(float(m["duration"]), 3)}
        for i, (m, ref) in enumerate(zip(meta, references))
    ]
    out_dir = Path(out_dir)
    report["markdown_path"] = str(out_dir / "report.md")
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def metrics_table(report: dict) -> str:
    lines = ["| model | CER | CER (normalised) | WER | utterances/s |", "|---|---|---|---|---|"]
    for name in ("base", "finetuned"):
        r = report[name]
        lines.append(f"| {name} (`{Path(r['model']).name}`) | {r['cer']:.4f} | {r['cer_normalized']:.4f} | "
                     f"{r['wer']:.4f} | {r['utterances_per_s']:.2f} |")
    return "\n".join(lines)


def render_markdown(report: dict, examples: int = 10) -> str:
    parts = ["# Evaluation report", ""]
    if report.get("warning"):
        parts += [f"> **WARNING:** {report['warning']}", ""]
    parts += [f"Test split: {report['test_rows']} utterances. Created {report['created_at']}.", "",
              metrics_table(report), "",
              "CER counts spaces; the normalised CER drops punctuation and whitespace first. WER splits on spaces.",
              "", f"## First {examples} utterances", "", "| id | reference | base | fine-tuned |", "|---|---|---|---|"]
    for u in report["per_utterance"][:examples]:
        cells = [str(u["id"]), u["reference"], u["base_hypothesis"], u["finetuned_hypothesis"]]
        parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(parts) + "\n"
