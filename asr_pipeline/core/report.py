"""The evaluation report as people read it: report.html (self-contained, opens from disk), report.md, report.json,
and training_curves.png. The JSON holds everything; the two documents are views of it."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from asr_pipeline.core.storage import write_json

MODEL_ROWS = ("base", "finetuned", "champion", "ctranslate2")
MODEL_LABELS = {"base": "base", "finetuned": "fine-tuned (challenger)", "champion": "champion (in service)",
                "ctranslate2": "fine-tuned, CTranslate2 int8"}


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


# ---------------------------------------------------------------- shared pieces


def _models(report: dict) -> list[str]:
    return [name for name in MODEL_ROWS if name in report]


def _interval(r: dict, measure: str) -> str:
    lo, hi = r.get(f"{measure}_ci95", [float("nan")] * 2)
    return f"{r[measure]:.4f} [{lo:.4f}, {hi:.4f}]"


def _model_cells(report: dict, name: str) -> list[str]:
    r = report[name]
    path = r.get("model") or r.get("path") or ""
    return [f"{MODEL_LABELS[name]}: {Path(str(path)).name}", *(_interval(r, m) for m in
            ("cer", "cer_normalized", "wer", "wer_normalized")), f"{r['utterances_per_s']:.2f}"]


METRIC_HEADER = ["model", "CER [95% CI]", "CER normalised [95% CI]", "WER [95% CI]", "WER normalised [95% CI]",
                 "utterances/s"]


def _bucket_models(report: dict, key: str) -> list[str]:
    rows = report.get(key) or [{}]
    return [n for n in ("base", "finetuned", "champion") if f"{n}_cer" in rows[0]]


def _bucket_header(report: dict, key: str, label: str) -> list[str]:
    return [label, "utterances"] + [f"{n} CER / normalised" for n in _bucket_models(report, key)]


def _bucket_rows(report: dict, key: str) -> list[list[str]]:
    names = _bucket_models(report, key)
    return [[row["bucket"], str(row["utterances"])] + [f"{row[f'{n}_cer']:.4f} / {row[f'{n}_cer_normalized']:.4f}"
                                                      for n in names] for row in report.get(key) or []]


def _policy_text(report: dict) -> str:
    p = report.get("normalization") or {}
    return (f"Normalised rates apply the same policy to references and hypotheses: punctuation "
            f"**{p.get('punctuation')}**, spacing **{p.get('spacing')}** (CER), numbers written as "
            f"**{p.get('numbers')}** (docs/NORMALISATION.md). Raw CER counts spaces; WER splits on spaces. Intervals "
            f"are percentile bootstraps over utterances ({(report.get('bootstrap') or {}).get('resamples')} "
            f"resamples).")


def _promotion_text(report: dict) -> str | None:
    decision = report.get("promotion")
    if not decision:
        return None
    verdict = "PROMOTE" if decision["promote"] else f"KEEP THE {str(decision.get('incumbent', 'champion')).upper()}"
    blocked = f" Blocked by: {', '.join(decision['blocked_by'])}." if decision.get("blocked_by") else ""
    rule = f", rule: {decision['rule']}" if decision.get("rule") else ""
    return f"{verdict}: {decision['reason']} (metric: {decision['metric']}{rule}).{blocked}"


HALLUCINATION_NOTE = ("Shares of test utterances. CER > 1: more edits than reference characters (insertions). "
                      "Repetition: a hypothesis whose zlib compression ratio is above 2.4, Whisper's threshold. "
                      "The hallucination share counts an utterance with either.")
COMPARISON_HEADER = ["comparison (normalised CER)", "difference", "95% CI (paired, resampling episodes)", "episodes",
                     "clears the rule"]
HALLUCINATION_HEADER = ["model", "insertion rate", "CER > 1", "repetition (compression > 2.4)", "empty output",
                        "hallucination share"]


def _comparison_rows(report: dict) -> list[list[str]]:
    decision = report.get("promotion") or {}
    rows = []
    for key, label in (("finetuned_vs_champion", "challenger − champion"), ("finetuned_vs_base", "challenger − base")):
        c = (report.get("comparisons") or {}).get(key)
        if not c:
            continue
        lo, hi = c["ci95"]
        blocked = set(decision.get("blocked_by") or [])
        incumbent = key.endswith(decision.get("incumbent", "-"))
        cleared = ("no" if "not_better" in blocked else "yes") if incumbent else "(not decisive)"
        rows.append([label, f"{c['difference']:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]", str(c["episodes"]), cleared])
    return rows


def _gate_text(report: dict) -> str:
    decision = report.get("promotion") or {}
    rule = decision.get("rule", "point")
    margin = decision.get("margin", 0.0)
    how = (f"the 95% upper bound of challenger − incumbent must be below −{margin:g}" if rule == "significant"
           else f"challenger − incumbent must be at most −{margin:g}")
    return (f"Rule **{rule}**: {how} (ASR_PROMOTION_RULE, ASR_PROMOTION_MARGIN); the incumbent is the "
            f"**{decision.get('incumbent', 'champion')}**. Intervals resample whole episodes, the same draw for both "
            f"models. The challenger's hallucination share may exceed the incumbent's by at most "
            f"{decision.get('hallucination_margin', float('nan')):g} (ASR_HALLUCINATION_MARGIN).")


def _hallucination_rows(report: dict) -> list[list[str]]:
    rows = []
    for name in _models(report):
        h = report[name].get("hallucination")
        if h:
            rows.append([MODEL_LABELS[name], f"{h['insertion_rate']:.4f}", f"{h['cer_above_1']:.3f}",
                         f"{h['repetition']:.3f}", f"{h['empty']:.3f}", f"{h['hallucination_share']:.3f}"])
    return rows


def _ct2_text(report: dict) -> str | None:
    c = report.get("ctranslate2")
    if not c:
        return None
    return (f"CTranslate2 int8 export at `{c['path']}`: CER {c['cer']:.4f} ({c['cer_minus_transformers']:+.4f} vs "
            f"transformers), {c['utterances_per_s']:.2f} utterances/s vs {c['transformers_utterances_per_s']:.2f} with "
            f"transformers ({c['speedup_vs_transformers']:.2f}x) on this machine's CPU.")


def _decoding_text(report: dict) -> str:
    """The decoding policy and the sample, as the report applied them (docs/EVALUATION.md)."""
    d, sample = report.get("decoding") or {}, report.get("sample")
    guards = (f"temperature fallback {d.get('temperatures')} on compression ratio > "
              f"{d.get('compression_ratio_threshold')} or mean log-prob < {d.get('logprob_threshold')}, no-speech "
              f"threshold {d.get('no_speech_threshold')}") if len(d.get("temperatures") or []) > 1 else "greedy only"
    text = (f"Decoding as deployed (no reference information): longest audio first, token budget "
            f"{d.get('token_budget')}; {guards}; {d.get('device', 'cpu')}, {d.get('dtype', 'float32')}.")
    if sample:
        scope = "the whole test split" if sample.get("full_split") else (
            f"a stable sample of {sample['utterances']} of {sample['test_split_rows']} test utterances "
            f"({sample['episodes']} episodes, at most {sample.get('per_episode')} clips each)")
        text += f" Scored on {scope}, fingerprint {str(sample.get('fingerprint'))[:12]}."
    return text


BENCHMARK_HEADER = ["benchmark set", "utterances", "model", "CER [95% CI]", "CER normalised [95% CI]", "cached"]


def _benchmark_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, entry in sorted((report.get("benchmarks") or {}).items()):
        for model in ("base", "finetuned", "champion"):
            if model in entry:
                r = entry[model]
                rows.append([name, str(entry["set"]["utterances"]), MODEL_LABELS[model], _interval(r, "cer"),
                             _interval(r, "cer_normalized"), "yes" if r.get("cached") else "no"])
    return rows


# ---------------------------------------------------------------- Markdown


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_md_row(header), "|" + "---|" * len(header)] + [_md_row(r) for r in rows])


def metrics_table(report: dict) -> str:
    return _md_table(METRIC_HEADER, [_model_cells(report, n) for n in _models(report)])


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
              metrics_table(report), "", _policy_text(report), ""]
    for text in (_promotion_text(report), _ct2_text(report), _decoding_text(report)):
        if text:
            parts += [text, ""]
    if report.get("comparisons"):
        parts += ["## Promotion gate", "", _md_table(COMPARISON_HEADER, _comparison_rows(report)), "",
                  _gate_text(report), ""]
    if _hallucination_rows(report):
        parts += ["## Hallucination", "", _md_table(HALLUCINATION_HEADER, _hallucination_rows(report)), "",
                  HALLUCINATION_NOTE, ""]
    if report.get("benchmarks"):
        parts += ["## Fixed benchmark sets", "", _md_table(BENCHMARK_HEADER, _benchmark_rows(report)), ""]
    for key, label in (("by_duration", "duration"), ("by_programme", "programme")):
        parts += [f"## CER by {label}", "", _md_table(_bucket_header(report, key, label), _bucket_rows(report, key)),
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


# ---------------------------------------------------------------- HTML

STYLE = """
body{font-family:system-ui,-apple-system,"Noto Sans KR","Malgun Gothic",sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1rem}
table{border-collapse:collapse;margin:.6rem 0 1.4rem;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.warning{background:#fff3cd;border:1px solid #e0c36a;padding:.6rem 1rem}
.decision{padding:.6rem 1rem;border:1px solid #9c9}.decision.keep{border-color:#c99;background:#fbeeee}
.decision.promote{background:#eef8ee}
.diff{font-family:ui-monospace,"D2Coding","Noto Sans Mono CJK KR","NanumGothicCoding",monospace;white-space:pre-wrap}
.del{background:#f8c9c9;text-decoration:line-through}.ins{background:#c9f0c9}.sub{background:#fde3a7}
img{max-width:100%}
"""


def _h(text) -> str:
    return html.escape(str(text))


def _html_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{_h(c)}</td>"
                                   for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def diff_html(diff: list[dict]) -> tuple[str, str]:
    """(reference line, hypothesis line), with deletions, insertions and substitutions marked."""
    ref, hyp = [], []
    for piece in diff:
        r, h = _h(piece["ref"]), _h(piece["hyp"])
        if piece["op"] == "equal":
            ref.append(r)
            hyp.append(h)
        elif piece["op"] == "substitute":
            ref.append(f'<span class="sub">{r}</span>')
            hyp.append(f'<span class="sub">{h}</span>')
        elif piece["op"] == "delete":
            ref.append(f'<span class="del">{r}</span>')
        else:
            hyp.append(f'<span class="ins">{h}</span>')
    return "".join(ref), "".join(hyp)


def render_html(report: dict, curves_png: bytes | None = None) -> str:
    parts = ['<!doctype html><html lang="ko"><head><meta charset="utf-8">',
             "<title>Evaluation report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>Evaluation report</h1>"]
    if report.get("warning"):
        parts.append(f'<p class="warning"><b>WARNING:</b> {_h(report["warning"])}</p>')
    parts.append(f"<p>Test split: {report['test_rows']} utterances. Created {_h(report['created_at'])}.</p>")
    parts.append(_html_table(METRIC_HEADER, [_model_cells(report, n) for n in _models(report)]))
    parts.append(f"<p>{_h(_policy_text(report)).replace('**', '')}</p>")
    decision = report.get("promotion")
    if decision:
        kind = "promote" if decision["promote"] else "keep"
        parts.append(f'<p class="decision {kind}">{_h(_promotion_text(report))}</p>')
    if _ct2_text(report):
        parts.append(f"<p>{_h(_ct2_text(report)).replace('`', '')}</p>")
    if report.get("comparisons"):
        parts.append("<h2>Promotion gate</h2>")
        parts.append(_html_table(COMPARISON_HEADER, _comparison_rows(report)))
        parts.append(f"<p>{_h(_gate_text(report)).replace('**', '')}</p>")
    if _hallucination_rows(report):
        parts.append("<h2>Hallucination</h2>")
        parts.append(_html_table(HALLUCINATION_HEADER, _hallucination_rows(report)))
        parts.append(f"<p>{_h(HALLUCINATION_NOTE)}</p>")
    parts.append(f'<p class="decoding">{_h(_decoding_text(report))}</p>')
    if report.get("benchmarks"):
        parts.append("<h2>Fixed benchmark sets</h2>")
        parts.append(_html_table(BENCHMARK_HEADER, _benchmark_rows(report)))
    for key, label in (("by_duration", "duration"), ("by_programme", "programme")):
        parts.append(f"<h2>CER by {label}</h2>")
        parts.append(_html_table(_bucket_header(report, key, label), _bucket_rows(report, key)))
    parts.append("<h2>Training curves</h2>")
    if curves_png:
        parts.append(f'<img alt="training curves: loss and validation CER by step" '
                     f'src="data:image/png;base64,{base64.b64encode(curves_png).decode()}">')
    else:
        parts.append("<p>(no training curves logged)</p>")
    worst = report.get("worst", [])
    parts.append(f"<h2>The {len(worst)} worst utterances (fine-tuned)</h2>")
    parts.append('<p>Red: only in the reference. Green: only in the hypothesis. Amber: substituted.</p>')
    rows = []
    for w in worst:
        ref, hyp = diff_html(w["diff"])
        rows.append(f"<tr><td>{w['id']}</td><td>{_h(w['programme'])}</td><td class=num>{w['duration']:.1f}</td>"
                    f"<td class=num>{w['cer']:.3f}</td><td><div class=diff>REF {ref}</div>"
                    f"<div class=diff>HYP {hyp}</div><small>{_h(w['audio_path'])}</small></td></tr>")
    parts.append("<table><thead><tr><th>id</th><th>programme</th><th>s</th><th>CER</th><th>aligned diff</th></tr>"
                 f"</thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append(f"<p>Decoding: {_h(report['decoding']['token_budget'])}, "
                 f"{_h(report['decoding'].get('dtype', 'float32'))}. Full per-utterance results: "
                 f"{_h(report.get('json_path'))}.</p></body></html>")
    return "\n".join(parts)
