"""The promotion gate as an asset check. It is a result, not a data fault, so it does not block: a challenger that loses
leaves the run green and champion_model materializes nothing."""

import math

import dagster as dg

BEATS_CHAMPION = "challenger_beats_champion"

EVALUATION_CHECKS = [
    # Not blocking: a challenger that loses is the report's answer, not a failed evaluation. The run stays green;
    # champion_model reads the same decision and materializes nothing (docs/EVALUATION.md, "Promotion gate").
    dg.AssetCheckSpec(BEATS_CHAMPION, asset="evaluation_report", blocking=False,
                      description="The promotion decision: the challenger beats the champion (or, with none, the "
                                  "base model) under ASR_PROMOTION_RULE on normalised test CER, paired by episode, "
                                  "and hallucinates no more than ASR_HALLUCINATION_MARGIN above it. A WARN result "
                                  "means the champion stays; champion_model then materializes nothing."),
]


def finite_or_none(values: list[float]) -> list[float | None]:
    """JSON metadata for the UI: NaN (no interval from fewer than two episodes) is not JSON, null is."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def challenger_beats_champion(decision: dict) -> dg.AssetCheckResult:
    """decision: report.json's `promotion` (asr_pipeline.core.promotion.decide_promotion)."""
    return dg.AssetCheckResult(
        check_name=BEATS_CHAMPION, asset_key="evaluation_report", passed=bool(decision["promote"]),
        severity=dg.AssetCheckSeverity.WARN, description=decision["reason"],
        metadata={"promote": decision["promote"], "rule": decision["rule"], "incumbent": decision["incumbent"],
                  "difference": decision["difference"],
                  "difference_ci95": dg.MetadataValue.json(finite_or_none(decision["difference_ci95"])),
                  "blocked_by": dg.MetadataValue.json(decision["blocked_by"]), "margin": decision["margin"]})
