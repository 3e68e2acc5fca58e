"""The report's pieces: aligned diffs, breakdowns, the worst utterances, and the files people open."""

import base64
import json
import re

import jiwer
import pytest

from asr_pipeline.core import error_analysis, evaluation
from asr_pipeline.core.report import diff_markdown, write_report
from asr_pipeline.core.report_html import diff_html, render_html
from asr_pipeline.core.text import edit_counts


def test_character_alignment_reassembles_both_sides_and_counts_jiwers_edits():
    ref, hyp = "오늘 날씨가 좋습니다", "오늘날씨가 좃습니다요"
    diff = error_analysis.character_alignment(ref, hyp)
    assert "".join(p["ref"] for p in diff) == ref and "".join(p["hyp"] for p in diff) == hyp
    out = jiwer.process_characters(ref, hyp)
    assert sum(p["op"] == "substitute" for p in diff) <= out.substitutions
    assert {p["op"] for p in diff} == {"equal", "delete", "substitute", "insert"}
    assert diff_markdown(diff) == "오늘[- -]날씨가 [-좋-]{+좃+}습니다{+요+}"
    ref_html, hyp_html = diff_html(error_analysis.character_alignment("<a>", "<b>"))
    assert "&lt;" in ref_html and "<a>" not in ref_html  # transcripts are escaped, never markup
    assert error_analysis.character_alignment("가나", "") == [{"op": "delete", "ref": "가나", "hyp": ""}]


def test_breakdowns_and_worst_utterances():
    assert [error_analysis.duration_bucket(s) for s in (0.5, 2.0, 7, 29.9, 31)] == \
        ["0-2 s", "2-5 s", "5-10 s", "20-30 s", ">=30 s"]
    assert error_analysis.programme_of("KBS1NEWS_202601010000") == "KBS1NEWS"
    assert error_analysis.programme_of("id:17") == "(unknown)"
    refs, hyps = ["가나다", "라마바사", "아자"], ["가나다", "라마", "차카타파"]
    counts = edit_counts(refs, hyps)
    rows = error_analysis.breakdown(["A", "B", "A"], {"finetuned": counts})
    assert rows[0] == {"bucket": "A", "utterances": 2, "finetuned_cer": pytest.approx(4 / 5),
                       "finetuned_cer_normalized": pytest.approx(4 / 5)}
    per_utt = [{"id": i, "audio_path": f"{i}.wav", "duration": 1.0, "programme": "A", "reference": r,
                "finetuned_hypothesis": h} for i, (r, h) in enumerate(zip(refs, hyps))]
    worst = error_analysis.worst_utterances(per_utt, counts, count=2)
    assert [w["id"] for w in worst] == [2, 1] and worst[0]["cer"] == pytest.approx(2.0)


def _report(tmp_path, curves=True):
    refs, hyps = ["금리를 0.1% 올렸다", "오늘 날씨"], ["금리를 영 점 일 프로 올렸다", "오늘 날시"]
    rates, counts = evaluation.score(refs, hyps, evaluation.DEFAULT_POLICY, resamples=200)
    per_utt = [{"id": i, "audio_path": f"/nas/P_202601010000_{i}.wav", "duration": 3.0, "programme": "P",
                "reference": r, "base_hypothesis": "", "finetuned_hypothesis": h}
               for i, (r, h) in enumerate(zip(refs, hyps))]
    report = {"created_at": "2026-11-24T00:00:00+00:00", "test_rows": 2, "warning": None,
              "normalization": evaluation.DEFAULT_POLICY.describe(), "bootstrap": {"resamples": 200},
              "decoding": {"token_budget": "max_new_tokens"},
              "base": {**evaluation.score(refs, ["", ""], evaluation.DEFAULT_POLICY, 200)[0], "model": "/m/base",
                       "utterances_per_s": 1.0},
              "finetuned": {**rates, "model": "/m/ft", "utterances_per_s": 2.0},
              "per_utterance": per_utt, "by_duration": error_analysis.breakdown(["2-5 s"] * 2, {"finetuned": counts}),
              "by_programme": error_analysis.breakdown(["P"] * 2, {"finetuned": counts}),
              "worst": error_analysis.worst_utterances(per_utt, counts),
              "promotion": {"promote": True, "reason": "there is no champion yet", "metric": "cer_normalized"},
              "training_curves": {"train": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}],
                                  "eval": [{"step": 2, "loss": 2.5, "cer": 0.4}]} if curves else {}}
    return write_report(report, tmp_path)


def test_report_files_are_self_contained_and_agree(tmp_path):
    report = _report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["html_path"] == str(tmp_path / "report.html")
    # "0.1%" read as "영 점 일 프로" is no error once normalised; 날시 for 날씨 is one in 11 + 4 characters
    assert saved["finetuned"]["cer_normalized"] == pytest.approx(1 / 15)
    assert saved["finetuned"]["cer_ci95"][0] <= saved["finetuned"]["cer"] <= saved["finetuned"]["cer_ci95"][1]
    # nothing is fetched: no external scripts, styles or images; the plot is inline and is a real PNG
    assert not re.search(r'(src|href)="(https?:)?//', html)
    png = base64.b64decode(re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)', html).group(1))
    assert png.startswith(b"\x89PNG") and png == (tmp_path / "training_curves.png").read_bytes()
    assert "PROMOTE" in html and "금리를" in html
    markdown = (tmp_path / "report.md").read_text()
    assert "| model | CER [95% CI] |" in markdown and "## The 2 worst utterances" in markdown
    assert report["training_curves_path"] == str(tmp_path / "training_curves.png")


def test_report_without_training_logs_says_so(tmp_path):
    report = _report(tmp_path, curves=False)
    assert report["training_curves_path"] is None and not (tmp_path / "training_curves.png").exists()
    assert "no training curves logged" in render_html(report)


def test_report_shows_the_promotion_gate_and_hallucination_sections(tmp_path):
    from asr_pipeline.core.promotion import PromotionPolicy, decide_promotion

    report = _report(tmp_path)
    refs = [u["reference"] for u in report["per_utterance"]]
    counts = {"finetuned": evaluation.score(refs, [u["finetuned_hypothesis"] for u in report["per_utterance"]],
                                            evaluation.DEFAULT_POLICY)[1],
              "base": evaluation.score(refs, ["", ""], evaluation.DEFAULT_POLICY)[1]}
    report["comparisons"] = evaluation.compare_models(counts, ["P_202601010000", "P_202601020000"])
    report["promotion"] = decide_promotion(report, PromotionPolicy())
    report = write_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    promotion = saved["promotion"]
    assert {"promote", "reason", "rule", "difference", "difference_ci95", "blocked_by"} <= set(promotion)
    assert promotion["incumbent"] == "base" and promotion["rule"] == "significant"
    assert promotion["difference"] == pytest.approx(saved["finetuned"]["cer_normalized"]
                                                    - saved["base"]["cer_normalized"])
    assert set(saved["finetuned"]["hallucination"]) >= {"insertion_rate", "cer_above_1", "repetition", "empty",
                                                        "hallucination_share"}
    assert saved["base"]["hallucination"]["empty"] == 1.0
    markdown, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    for text in (markdown, html):
        assert "Promotion gate" in text and "challenger − base" in text and "Hallucination" in text
        assert "hallucination share" in text and "significant" in text
    assert "| base | 0.0000 | 0.000 | 0.000 | 1.000 | 0.000 |" in markdown
