"""The promotion decision: whether a fine-tuned checkpoint (the challenger) replaces the champion, or, with no champion
yet, beats the base model it was trained from (docs/EVALUATION.md, "Promotion gate"). What a promotion then does to
the stored models is core/champion.py."""

from __future__ import annotations

from dataclasses import dataclass

# The CER a promotion is decided on: normalised (docs/NORMALISATION.md), so a policy-level difference such as
# "0.1%" vs "영 점 일 프로" neither wins nor loses a promotion.
PROMOTION_METRIC = "cer_normalized"

PROMOTION_RULES = ("significant", "point")


@dataclass(frozen=True)
class PromotionPolicy:
    """ASR_PROMOTION_RULE, ASR_PROMOTION_MARGIN, ASR_HALLUCINATION_MARGIN, ASR_PROMOTION_MIN_EPISODES, how
    benchmark regressions count, and ASR_EXPORT_MARGIN."""

    rule: str = "significant"
    margin: float = 0.005
    hallucination_margin: float = 0.01
    benchmark_gate: str = "block"
    # A bootstrap over 2 or 3 episodes has only a handful of distinct resamples: its interval is far too narrow.
    min_episodes: int = 10
    # How much worse (normalised CER) the CTranslate2 int8 export, the model deployed, may score than the checkpoint
    # on the same sample: wide enough for int8's near-tie flips on a small sample (1.9 points from float32 on 12
    # clips of the unsure base model, docs/BENCHMARKS.md), narrow enough for a broken conversion.
    export_margin: float = 0.05

    def __post_init__(self):
        # the environment variables' ranges (defs/common/resources.py), for settings from the Launchpad; the gate
        # arrives lower-cased (PipelineSettings.promotion_policy), as the variable's parser has it
        if self.rule not in PROMOTION_RULES:
            raise ValueError(f"ASR_PROMOTION_RULE must be one of {', '.join(PROMOTION_RULES)}, got {self.rule!r}")
        if self.benchmark_gate not in ("block", "warn"):
            raise ValueError(f"ASR_BENCHMARK_GATE must be block or warn, got {self.benchmark_gate!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"ASR_PROMOTION_MARGIN must be at least 0 and below 1, got {self.margin!r}")
        for name, value in (("ASR_HALLUCINATION_MARGIN", self.hallucination_margin),
                            ("ASR_EXPORT_MARGIN", self.export_margin)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        # 1 is allowed here (its bootstrap interval is NaN, which never wins); the variable asks for 2 or more
        if self.min_episodes < 1:
            raise ValueError(f"ASR_PROMOTION_MIN_EPISODES must be 1 or more, got {self.min_episodes!r}")

    def beats(self, comparison: dict) -> bool:
        """challenger − incumbent (comparison['difference'], ['ci95']) clears the rule. `significant`: the interval's
        upper bound is below −margin. `point`: the difference is below zero and at most −margin. A tie never wins."""
        difference, (_, upper) = comparison["difference"], comparison["ci95"]
        if self.rule == "point":
            return difference < 0 and -difference >= self.margin - 1e-12
        if comparison["episodes"] < self.min_episodes:
            return False
        return upper == upper and upper < -self.margin  # NaN (fewer than two episodes) never wins


def _comparison_text(name: str, comparison: dict, policy: PromotionPolicy, won: bool) -> str:
    lo, hi = comparison["ci95"]
    figures = f"challenger − {name} normalised CER {comparison['difference']:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}; " \
              f"{comparison['episodes']} episodes]"
    if policy.rule == "point":
        need = f"needs a difference <= {-policy.margin:+.4f}"
    elif comparison["episodes"] < policy.min_episodes:
        need = (f"needs at least {policy.min_episodes} episodes in the test split for its interval to mean anything, "
                "ASR_PROMOTION_MIN_EPISODES")
    else:
        need = f"needs the upper bound < {-policy.margin:+.4f}"
    return f"{figures} {'beats' if won else 'does not beat'} the {name} (rule {policy.rule}, {need})"


def decide_promotion(report: dict, policy: PromotionPolicy, champion_unavailable: str | None = None,
                     benchmark_regressions: list[str] = ()) -> dict:
    """report.json's `promotion`: {promote, reason, rule, difference, difference_ci95, blocked_by, ...}.

    The incumbent is the champion, or, with no champion yet, the base model the challenger was trained from: a
    challenger that does not beat the model it started from is never promoted. (With a champion, challenger − base is
    reported, measured the same way, but does not decide: a champion worse than the base should still give way to a
    better challenger.) Blocked (blocked_by) by:
    - not_better: does not beat the incumbent under the rule;
    - hallucination: hallucination share above the incumbent's by more than hallucination_margin;
    - benchmark:<name>: worse than the incumbent on that benchmark set (ASR_BENCHMARK_GATE=warn only reports it);
    - incomparable_champion: a champion exists but could not be decoded on these features;
    - export: its CTranslate2 int8 export (what is deployed) scores worse than it by more than export_margin."""
    incumbent = "champion" if "champion" in report else "base"
    comparisons = report["comparisons"]
    main = comparisons[f"finetuned_vs_{incumbent}"]
    blocked, reasons, notes = [], [], []
    if champion_unavailable:
        blocked.append("incomparable_champion")
        reasons.append(champion_unavailable)
    won = policy.beats(main)
    if not won:
        blocked.append("not_better")
    reasons.append(_comparison_text(incumbent, main, policy, won))
    challenger_share = report["finetuned"]["hallucination"]["hallucination_share"]
    incumbent_share = report[incumbent]["hallucination"]["hallucination_share"]
    if challenger_share - incumbent_share > policy.hallucination_margin + 1e-12:
        blocked.append("hallucination")
        reasons.append(f"hallucination share {challenger_share:.3f} vs the {incumbent}'s {incumbent_share:.3f}: "
                       f"worse by more than ASR_HALLUCINATION_MARGIN {policy.hallucination_margin:.3f}")
    for name in benchmark_regressions:
        text = f"worse than the {incumbent} on benchmark {name} by more than the margin"
        if policy.benchmark_gate == "block":
            blocked.append(f"benchmark:{name}")
            reasons.append(text)
        else:
            notes.append(f"warning: {text} (ASR_BENCHMARK_GATE=warn)")
    export = report.get("ctranslate2") or {}
    if export.get(PROMOTION_METRIC) is not None:
        worse = export[PROMOTION_METRIC] - report["finetuned"][PROMOTION_METRIC]
        if worse > policy.export_margin + 1e-12:
            blocked.append("export")
            reasons.append(f"its CTranslate2 int8 export, the model deployed, scores {worse:+.4f} normalised CER "
                           f"against the checkpoint: worse by more than ASR_EXPORT_MARGIN {policy.export_margin:.3f}")
    promote = not blocked
    reasons += notes
    return {
        "promote": promote,
        "reason": "; ".join(reasons),
        "rule": policy.rule, "metric": PROMOTION_METRIC, "margin": policy.margin,
        "hallucination_margin": policy.hallucination_margin, "min_episodes": policy.min_episodes,
        "export_margin": policy.export_margin, "export_cer": export.get(PROMOTION_METRIC),
        "incumbent": incumbent,
        "difference": main["difference"], "difference_ci95": main["ci95"],
        "versus_base": {"difference": comparisons["finetuned_vs_base"]["difference"],
                        "difference_ci95": comparisons["finetuned_vs_base"]["ci95"]},
        "episodes": main["episodes"],
        "challenger_cer": report["finetuned"][PROMOTION_METRIC],
        "champion_cer": report["champion"][PROMOTION_METRIC] if "champion" in report else None,
        "base_cer": report["base"][PROMOTION_METRIC],
        "hallucination": {"challenger": challenger_share, "incumbent": incumbent_share},
        "blocked_by": blocked,
    }
