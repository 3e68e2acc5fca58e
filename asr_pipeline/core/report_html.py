"""report.html: the evaluation report as one self-contained page (styles and the training-curves image inline, so it
opens from disk or as a mail attachment), with the fine-tuned model's worst utterances as aligned, coloured diffs."""

from __future__ import annotations

import base64
import html

from asr_pipeline.core.report_tables import (BENCHMARK_HEADER, COMPARISON_HEADER, HALLUCINATION_HEADER,
                                             HALLUCINATION_NOTE, METRIC_HEADER, benchmark_rows, bucket_header,
                                             bucket_rows, comparison_rows, ct2_text, decoding_text, gate_text,
                                             hallucination_rows, model_cells, policy_text, promotion_text,
                                             reported_models)

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
    parts.append(_html_table(METRIC_HEADER, [model_cells(report, n) for n in reported_models(report)]))
    parts.append(f"<p>{_h(policy_text(report)).replace('**', '')}</p>")
    decision = report.get("promotion")
    if decision:
        kind = "promote" if decision["promote"] else "keep"
        parts.append(f'<p class="decision {kind}">{_h(promotion_text(report))}</p>')
    if ct2_text(report):
        parts.append(f"<p>{_h(ct2_text(report)).replace('`', '')}</p>")
    if report.get("comparisons"):
        parts.append("<h2>Promotion gate</h2>")
        parts.append(_html_table(COMPARISON_HEADER, comparison_rows(report)))
        parts.append(f"<p>{_h(gate_text(report)).replace('**', '')}</p>")
    if hallucination_rows(report):
        parts.append("<h2>Hallucination</h2>")
        parts.append(_html_table(HALLUCINATION_HEADER, hallucination_rows(report)))
        parts.append(f"<p>{_h(HALLUCINATION_NOTE)}</p>")
    parts.append(f'<p class="decoding">{_h(decoding_text(report))}</p>')
    if report.get("benchmarks"):
        parts.append("<h2>Fixed benchmark sets</h2>")
        parts.append(_html_table(BENCHMARK_HEADER, benchmark_rows(report)))
    for key, label in (("by_duration", "duration"), ("by_programme", "programme")):
        parts.append(f"<h2>CER by {label}</h2>")
        parts.append(_html_table(bucket_header(report, key, label), bucket_rows(report, key)))
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
