"""The evaluation report as people read it: report.html (self-contained, opens from disk), report.md, report.json,
and training_curves.png. The JSON holds everything; the two documents are views of it."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from asr_pipeline.core.report_html import render_html
from asr_pipeline.core.report_tables import (BENCHMARK_HEADER, COMPARISON_HEADER, HALLUCINATION_HEADER,
                                             HALLUCINATION_NOTE, METRIC_HEADER, benchmark_rows, bucket_header,
                                             bucket_rows, comparison_rows, ct2_text, decoding_text, gate_text,
                                             hallucination_rows, model_cells, policy_text, promotion_text,
                                             reported_models)
from asr_pipeline.core.storage import write_json


def write_report(report: dict, out_dir: Path, final_dir: Path | None = None) -> dict:
    """Write the four files into out_dir; the paths recorded in the report point at final_dir (where the IO manager
    publishes out_dir) when given."""
    out_dir = Path(out_dir)
    where = Path(final_dir or out_dir)
    png = training_curves_png(report.get("training_curves") or {})
    if png:
        (out_dir / "training_curves.png").write_bytes(png)
    report["json_path"] = str(where / "report.json")
    report["markdown_path"] = str(where / "report.md")
    report["html_path"] = str(where / "report.html")
    report["training_curves_path"] = str(where / "training_curves.png") if png else None
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(report, png), encoding="utf-8")
    return report


# ---------------------------------------------------------------- training curves


def training_curves_png(curves: dict) -> bytes | None:
    """Loss (train, validation) and validation CER against step, or None when training logged nothing."""
    train, evals = curves.get("train") or [], curves.get("eval") or []
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, (loss_ax, cer_ax) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    if train:
        loss_ax.plot([p["step"] for p in train], [p["loss"] for p in train], ".-", label="train loss", color="#1f77b4")
    if evals:
        loss_ax.plot([p["step"] for p in evals], [p["loss"] for p in evals], "o-", label="validation loss",
                     color="#d62728")
    loss_ax.set_xlabel("step")
    loss_ax.set_title("loss")
    loss_ax.legend()
    cer = [p for p in evals if p.get("cer") is not None]
    if cer:
        cer_ax.plot([p["step"] for p in cer], [p["cer"] for p in cer], "o-", color="#2ca02c")
    else:
        cer_ax.text(0.5, 0.5, "no validation CER logged", ha="center", va="center", transform=cer_ax.transAxes)
    cer_ax.set_xlabel("step")
    cer_ax.set_title("validation CER")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def curves_markdown_image(png: bytes | None) -> str:
    """The plot as an inline image for the Dagster UI's Markdown metadata (no file server needed)."""
    if not png:
        return "(no training curves logged)"
    return f"![training curves](data:image/png;base64,{base64.b64encode(png).decode()})"


# ---------------------------------------------------------------- Markdown


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_md_row(header), "|" + "---|" * len(header)] + [_md_row(r) for r in rows])


def metrics_table(report: dict) -> str:
    return _md_table(METRIC_HEADER, [model_cells(report, n) for n in reported_models(report)])


def diff_markdown(diff: list[dict]) -> str:
    """가[-나-]{+너+}다: deletions in [-...-], insertions in {+...+}, a substitution is both."""
    out = []
    for piece in diff:
        if piece["op"] == "equal":
            out.append(piece["ref"])
        else:
            out.append((f"[-{piece['ref']}-]" if piece["ref"] else "") + (f"{{+{piece['hyp']}+}}" if piece["hyp"]
                                                                         else ""))
    return "".join(out)


def render_markdown(report: dict, curves_png: bytes | None = None) -> str:
    """curves_png given: the plot is embedded (for the Dagster UI); otherwise linked as training_curves.png."""
    parts = ["# Evaluation report", ""]
    if report.get("warning"):
        parts += [f"> **WARNING:** {report['warning']}", ""]
    parts += [f"Test split: {report['test_rows']} utterances. Created {report['created_at']}.", "",
              metrics_table(report), "", policy_text(report), ""]
    for text in (promotion_text(report), ct2_text(report), decoding_text(report)):
        if text:
            parts += [text, ""]
    if report.get("comparisons"):
        parts += ["## Promotion gate", "", _md_table(COMPARISON_HEADER, comparison_rows(report)), "",
                  gate_text(report), ""]
    if hallucination_rows(report):
        parts += ["## Hallucination", "", _md_table(HALLUCINATION_HEADER, hallucination_rows(report)), "",
                  HALLUCINATION_NOTE, ""]
    if report.get("benchmarks"):
        parts += ["## Fixed benchmark sets", "", _md_table(BENCHMARK_HEADER, benchmark_rows(report)), ""]
    for key, label in (("by_duration", "duration"), ("by_programme", "programme")):
        parts += [f"## CER by {label}", "", _md_table(bucket_header(report, key, label), bucket_rows(report, key)),
                  ""]
    parts += ["## Training curves", ""]
    if curves_png:
        parts += [curves_markdown_image(curves_png), ""]
    else:
        parts += ["![training curves](training_curves.png)" if report.get("training_curves_path")
                  else "(no training curves logged)", ""]
    worst = report.get("worst", [])
    parts += [f"## The {len(worst)} worst utterances (fine-tuned)", "",
              "Diff: `[-x-]` is in the reference only, `{+y+}` in the hypothesis only.", "",
              _md_table(["id", "programme", "s", "CER", "reference", "diff"],
                        [[str(w["id"]), w["programme"], f"{w['duration']:.1f}", f"{w['cer']:.3f}", w["reference"],
                          diff_markdown(w["diff"])] for w in worst]), ""]
    parts += [f"Full per-utterance results: `{report.get('json_path')}`. Decoding: "
              f"{report['decoding']['token_budget']}, {report['decoding'].get('dtype', 'float32')}.", ""]
    return "\n".join(parts)
