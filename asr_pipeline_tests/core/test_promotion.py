"""The promotion gate: a paired bootstrap over episodes, hallucination measures, and the decision built on them."""

import time

import numpy as np
import pytest

from asr_pipeline.core import evaluation
from asr_pipeline.core.promotion import PromotionPolicy, decide_promotion
from asr_pipeline.core.hallucination import compression_ratio, hallucination_stats
from asr_pipeline.core.synth import demo_sentences
from asr_pipeline.core.text import EditCounts, bootstrap_ci, edit_counts, paired_episode_bootstrap

MEASURE = "cer_normalized"


def _counts(edits, length=50) -> EditCounts:
    edits = np.asarray(edits, dtype=np.int64)
    return EditCounts({MEASURE: edits}, {MEASURE: np.full(len(edits), length, dtype=np.int64)},
                      {MEASURE: np.zeros(len(edits), dtype=np.int64)})


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def test_paired_episode_interval_excludes_zero_where_unpaired_intervals_overlap():
    # 40 episodes of 10 clips whose difficulty varies a lot; the challenger makes one edit fewer on every clip.
    rng = np.random.default_rng(1)
    incumbent = rng.integers(1, 40, size=400)
    challenger, champion = _counts(incumbent - 1), _counts(incumbent)
    groups = [f"EP_{i // 10:04d}" for i in range(400)]
    unpaired = [bootstrap_ci(c, MEASURE) for c in (challenger, champion)]
    assert _overlap(*unpaired), unpaired  # two intervals side by side cannot tell the models apart
    paired = paired_episode_bootstrap(challenger, champion, groups)
    assert paired["difference"] == pytest.approx(-1 / 50)
    assert paired["ci95"][1] < 0 and paired["episodes"] == 40  # the paired one can: the difference is steady
    assert decide_promotion(_report(challenger, champion, groups), PromotionPolicy("significant", 0.005))["promote"]


def test_paired_episode_interval_includes_zero_where_utterance_intervals_do_not_overlap():
    # 12 episodes of 25 clips; the challenger is better on one episode only (say, one speaker it learned).
    incumbent = np.full(300, 5)
    challenger_edits = incumbent.copy()
    challenger_edits[:25] = 0
    challenger, champion = _counts(challenger_edits), _counts(incumbent)
    groups = [f"EP_{i // 25:02d}" for i in range(300)]
    unpaired = [bootstrap_ci(c, MEASURE) for c in (challenger, champion)]
    assert not _overlap(*unpaired), unpaired  # clips treated as independent: a "clear" win
    paired = paired_episode_bootstrap(challenger, champion, groups)
    assert paired["difference"] < 0 and paired["ci95"][1] >= 0, paired  # one episode in twelve: not shown
    report = _report(challenger, champion, groups)
    significant = decide_promotion(report, PromotionPolicy("significant", 0.005))
    assert not significant["promote"] and significant["blocked_by"] == ["not_better"]
    assert significant["difference_ci95"] == paired["ci95"] and significant["rule"] == "significant"
    assert "needs the upper bound < -0.0050" in significant["reason"]
    assert decide_promotion(report, PromotionPolicy("point", 0.005))["promote"]  # today's rule would promote


def test_too_few_episodes_never_give_a_significant_win():
    # 3 episodes, the challenger better on each: a bootstrap over 3 episodes has 10 distinct resamples, its interval
    # is too narrow to trust
    challenger, champion = _counts([0] * 30), _counts([10] * 30)
    groups = [f"EP_{i // 10}" for i in range(30)]
    report = _report(challenger, champion, groups)
    assert report["comparisons"]["finetuned_vs_base"]["ci95"][1] < -0.005
    decision = decide_promotion(report, PromotionPolicy("significant", 0.005))
    assert not decision["promote"] and "at least 10 episodes" in decision["reason"]
    assert decide_promotion(report, PromotionPolicy("significant", 0.005, min_episodes=3))["promote"]


def test_the_bootstrap_is_seeded_and_fast_on_thousands_of_utterances():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 30, size=20_000)
    a, b = _counts(base), _counts(np.maximum(base - rng.integers(0, 2, size=20_000), 0))
    groups = [f"EP_{i // 10}" for i in range(20_000)]
    started = time.process_time()  # CPU time: other jobs on a shared machine do not count
    first = paired_episode_bootstrap(b, a, groups, resamples=2000)
    assert time.process_time() - started < 1.0  # 2000 resamples of 2000 episodes, 20,000 clips
    assert first == paired_episode_bootstrap(b, a, groups, resamples=2000)
    assert first["ci95"][0] <= first["difference"] <= first["ci95"][1]


def test_one_episode_gives_no_interval_and_never_a_significant_win():
    challenger, champion = _counts([0, 0, 0]), _counts([10, 10, 10])
    paired = paired_episode_bootstrap(challenger, champion, ["EP", "EP", "EP"])
    assert np.isnan(paired["ci95"]).all()
    report = _report(challenger, champion, ["EP"] * 3)
    decision = decide_promotion(report, PromotionPolicy("significant", 0.005))
    assert not decision["promote"] and not decide_promotion(report, PromotionPolicy(min_episodes=1))["promote"]


def _report(challenger: EditCounts, incumbent: EditCounts | None, groups, base: EditCounts | None = None,
            hypotheses: dict | None = None) -> dict:
    """A report as evaluate_on_test builds it, from edit counts (and hypotheses, for the hallucination measures)."""
    hypotheses = hypotheses or {}
    counts = {"finetuned": challenger, "base": base or incumbent}
    if incumbent is not None and base is not None:
        counts["champion"] = incumbent
    report = {name: {MEASURE: c.rate(MEASURE),
                     "hallucination": hallucination_stats(c, hypotheses.get(name, ["ordinary text"] * len(groups)))}
              for name, c in counts.items()}
    report["comparisons"] = evaluation.compare_models(counts, groups)
    return report


def test_with_no_champion_the_base_is_the_incumbent_and_a_worse_fine_tune_is_never_promoted():
    # the case from the field: fine-tune 0.258 against base 0.254, no champion yet
    rng = np.random.default_rng(3)
    groups = [f"EP_{i // 20}" for i in range(2000)]
    base = rng.binomial(50, 0.254, size=2000)
    fine_tune = base + rng.choice([0, 0, 0, 1], size=2000) - rng.choice([0, 0, 0, 0, 0, 1], size=2000)
    report = _report(_counts(fine_tune), None, groups, base=_counts(base))
    assert "champion" not in report and report["finetuned"][MEASURE] > report["base"][MEASURE]
    for rule in ("significant", "point"):
        decision = decide_promotion(report, PromotionPolicy(rule, 0.0))
        assert not decision["promote"] and decision["incumbent"] == "base", decision
        assert decision["blocked_by"] == ["not_better"] and decision["champion_cer"] is None
        assert decision["difference"] == pytest.approx(report["finetuned"][MEASURE] - report["base"][MEASURE])


def test_with_a_champion_both_differences_are_reported_and_the_champion_decides():
    groups = [f"EP_{i // 10}" for i in range(300)]
    base, champion, challenger = _counts(np.full(300, 20)), _counts(np.full(300, 12)), _counts(np.full(300, 10))
    report = _report(challenger, champion, groups, base=base)
    decision = decide_promotion(report, PromotionPolicy())
    assert decision["promote"] and decision["incumbent"] == "champion" and decision["blocked_by"] == []
    assert decision["difference"] == pytest.approx(-2 / 50) and decision["versus_base"]["difference"] == \
        pytest.approx(-10 / 50)
    assert decision["difference_ci95"][1] < -0.005 and len(decision["versus_base"]["difference_ci95"]) == 2


def test_hallucination_measures_of_a_model_that_repeats_itself():
    references = demo_sentences(20)
    looping = [r + " " + "감사합니다 " * 12 if i % 4 == 0 else r for i, r in enumerate(references)]
    looping[1] = ""
    counts = edit_counts(references, looping)
    stats = hallucination_stats(counts, looping)
    assert stats["repetition"] == pytest.approx(5 / 20) and stats["cer_above_1"] == pytest.approx(5 / 20)
    assert stats["empty"] == pytest.approx(1 / 20) and stats["hallucination_share"] == pytest.approx(5 / 20)
    assert stats["insertion_rate"] == pytest.approx(counts.insertions[MEASURE].sum() / counts.lengths[MEASURE].sum())
    assert stats["insertion_rate"] > 0.5
    assert max(compression_ratio(r) for r in references) < 2.4 < compression_ratio(looping[0])
    clean = hallucination_stats(edit_counts(references, references), references)
    assert clean["hallucination_share"] == 0 and clean["insertion_rate"] == 0


def test_the_gate_blocks_a_better_scoring_challenger_that_hallucinates_more():
    references = demo_sentences(40)
    groups = [f"EP_{i // 4}" for i in range(40)]
    # the incumbent drops the last words everywhere; the challenger is exact, except that it loops on
    # three clips in forty: a lower CER overall, and a hallucination share of 7.5%
    incumbent = [r[:-6] for r in references]
    challenger = [r + " 감사합니다" * 6 if i in (3, 17, 29) else r for i, r in enumerate(references)]
    counts = {"base": edit_counts(references, incumbent), "finetuned": edit_counts(references, challenger)}
    report = {"base": {**evaluation.score(references, incumbent, evaluation.DEFAULT_POLICY)[0]},
              "finetuned": {**evaluation.score(references, challenger, evaluation.DEFAULT_POLICY)[0]},
              "comparisons": evaluation.compare_models(counts, groups)}
    assert report["finetuned"][MEASURE] < report["base"][MEASURE]
    assert report["finetuned"]["hallucination"]["hallucination_share"] == pytest.approx(3 / 40)
    decision = decide_promotion(report, PromotionPolicy("point", 0.005, hallucination_margin=0.05))
    assert not decision["promote"] and decision["blocked_by"] == ["hallucination"]
    assert "hallucination share 0.075" in decision["reason"]
    assert decide_promotion(report, PromotionPolicy("point", 0.005, hallucination_margin=0.1))["promote"]


def test_benchmark_regressions_block_or_warn_and_an_incomparable_champion_blocks():
    groups = [f"EP_{i // 10}" for i in range(100)]
    report = _report(_counts(np.full(100, 5)), _counts(np.full(100, 10)), groups)
    blocked = decide_promotion(report, PromotionPolicy(), benchmark_regressions=["golden"])
    assert not blocked["promote"] and blocked["blocked_by"] == ["benchmark:golden"]
    warned = decide_promotion(report, PromotionPolicy(benchmark_gate="warn"), benchmark_regressions=["golden"])
    assert warned["promote"] and "warning" in warned["reason"]
    lost = decide_promotion(report, PromotionPolicy(), champion_unavailable="the champion's files are gone")
    assert not lost["promote"] and lost["blocked_by"] == ["incomparable_champion"]


def test_a_challenger_whose_deployed_export_lost_accuracy_is_blocked():
    """champion.json ships the CTranslate2 int8 export: a conversion that broke must not be promoted, while int8's
    near-tie flips on a small sample pass."""
    groups = [f"EP_{i // 10}" for i in range(100)]
    report = _report(_counts(np.full(100, 5)), _counts(np.full(100, 10)), groups)
    challenger = report["finetuned"][MEASURE]
    assert decide_promotion(report, PromotionPolicy())["promote"]  # no export scored: nothing to say
    for worse, promoted in ((0.03, True), (0.5, False), (-0.01, True)):
        report["ctranslate2"] = {MEASURE: challenger + worse}
        decision = decide_promotion(report, PromotionPolicy())
        assert decision["promote"] is promoted and decision["export_margin"] == 0.05
        if not promoted:
            assert decision["blocked_by"] == ["export"] and "ASR_EXPORT_MARGIN 0.050" in decision["reason"]
    assert decide_promotion(report, PromotionPolicy(export_margin=0.6))["promote"]


def test_an_unknown_rule_is_refused_with_the_variable_name():
    with pytest.raises(ValueError, match="ASR_PROMOTION_RULE"):
        PromotionPolicy("majority")


@pytest.mark.parametrize("settings, variable", [
    ({"benchmark_gate": "Block"}, "ASR_BENCHMARK_GATE"), ({"margin": -0.5}, "ASR_PROMOTION_MARGIN"),
    ({"hallucination_margin": 7.0}, "ASR_HALLUCINATION_MARGIN"), ({"export_margin": 2.0}, "ASR_EXPORT_MARGIN"),
    ({"min_episodes": 0}, "ASR_PROMOTION_MIN_EPISODES"),
])
def test_settings_from_the_launchpad_are_checked_as_the_environment_variables_are(settings, variable):
    """The Launchpad's resource config bypasses the environment's parsing: the policy checks them itself (a gate of
    'Block' once behaved as warn), and the evaluation builds it before decoding anything."""
    with pytest.raises(ValueError, match=variable):
        PromotionPolicy(**settings)


def test_the_gate_settings_come_from_the_environment_and_name_the_variable(monkeypatch, tmp_path):
    from asr_pipeline.core.errors import ConfigError
    from asr_pipeline.defs.common.resources import settings_from_environment

    monkeypatch.setenv("ASR_HOME", str(tmp_path))
    policy = settings_from_environment().promotion_policy()
    assert (policy.rule, policy.margin, policy.hallucination_margin, policy.min_episodes) == \
        ("significant", 0.005, 0.01, 10)
    monkeypatch.setenv("ASR_PROMOTION_RULE", "point")
    monkeypatch.setenv("ASR_HALLUCINATION_MARGIN", "0.05")
    policy = settings_from_environment().promotion_policy()
    assert (policy.rule, policy.hallucination_margin) == ("point", 0.05)
    monkeypatch.setenv("ASR_PROMOTION_RULE", "always")
    with pytest.raises(ConfigError, match="ASR_PROMOTION_RULE"):
        settings_from_environment()
    monkeypatch.setenv("ASR_PROMOTION_RULE", "significant")
    monkeypatch.setenv("ASR_HALLUCINATION_MARGIN", "2")
    with pytest.raises(ConfigError, match="ASR_HALLUCINATION_MARGIN"):
        settings_from_environment()
    monkeypatch.setenv("ASR_HALLUCINATION_MARGIN", "0.01")
    monkeypatch.setenv("ASR_EXPORT_MARGIN", "0.02")
    assert settings_from_environment().promotion_policy().export_margin == 0.02
    monkeypatch.setenv("ASR_EXPORT_MARGIN", "-1")
    with pytest.raises(ConfigError, match="ASR_EXPORT_MARGIN"):
        settings_from_environment()
    monkeypatch.delenv("ASR_EXPORT_MARGIN")
    monkeypatch.setenv("ASR_PROMOTION_MIN_EPISODES", "1")
    with pytest.raises(ConfigError, match="ASR_PROMOTION_MIN_EPISODES"):
        settings_from_environment()
