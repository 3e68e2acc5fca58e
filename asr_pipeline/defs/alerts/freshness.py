"""Freshness asset checks: is each asset keeping up? Non-blocking checks on featurized_shards, finetuned_checkpoint
and champion_model, shown on each asset's page. The asr_alerts sensor evaluates them every tick and records the
result when it changes (runless check evaluations); "Execute" on the asset's Checks tab evaluates them too.

Each failed check names the batch, the dates and the command that fixes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg

from asr_pipeline.core.alerts import FreshnessLimits
from asr_pipeline.defs.alerts import sources

BATCHES_DONE = "batches_done_in_time"
TRAINING_KEEPS_UP = "training_keeps_up"
DECISION_RECENT = "promotion_decided_recently"
CHECK_ASSETS = {BATCHES_DONE: "featurized_shards", TRAINING_KEEPS_UP: "finetuned_checkpoint",
                DECISION_RECENT: "champion_model"}
DAY_S = 86400.0


def plural_batches(count: int) -> str:
    return f"{count} batch" if count == 1 else f"{count} batches"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class FreshnessResult:
    check: str
    passed: bool
    description: str
    severity: str = "WARN"                 # dagster AssetCheckSeverity name
    batches: list[dict] = field(default_factory=list)  # the batches at fault, for the UI and the alerts
    fix: str = ""

    @property
    def asset(self) -> str:
        return CHECK_ASSETS[self.check]

    def as_dict(self) -> dict:
        return {"asset": self.asset, "passed": self.passed, "severity": self.severity,
                "description": self.description, "fix": self.fix or None, "batches": self.batches}

    def to_evaluation(self) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(self.asset), check_name=self.check, passed=self.passed,
            severity=dg.AssetCheckSeverity[self.severity], description=self.description,
            metadata={"batches": dg.MetadataValue.json(self.batches), "fix": dg.MetadataValue.text(self.fix or "-")})

    def fingerprint(self) -> str:
        """What must change for the check's recorded result to be renewed (ages alone do not)."""
        return f"{self.passed}:{','.join(sorted(b['batch'] for b in self.batches))}"


def check_batches_done(states: list[sources.BatchState], limits: FreshnessLimits, now: float) -> FreshnessResult:
    limit_s = limits.max_pending_hours * 3600
    late = [s for s in states if s.state not in ("done", "stale") and s.registered_at is not None
            and now - s.registered_at > limit_s]
    if not late:
        waiting = sum(1 for s in states if s.state != "done")
        return FreshnessResult(BATCHES_DONE, True, f"every batch registered more than {limits.max_pending_hours:g} h "
                               f"ago is done ({plural_batches(len(states))}, {waiting} in progress)")
    keys = " ".join(s.key for s in late)
    batches = [{"batch": s.key, "state": s.state, "registered_at": when(s.registered_at),
                "hours": round((now - s.registered_at) / 3600, 1), "failures": s.failures, "reason": s.reason,
                "run_id": s.last_run_id} for s in late]
    lines = [f"{b['batch']} registered {b['registered_at']} ({b['hours']} h ago), {b['state']}"
             + (f" after {b['failures']} failed runs" if b["failures"] else "") + (f": {b['reason']}" if b["reason"]
                                                                                    else "") for b in batches]
    fix = (f"`asr-pipeline quarantine` lists the rows left out; fix their audio or ASR_PATH_MAP, then "
           f"`asr-pipeline backfill {keys}`" if any(s.state == "blocked" for s in late)
           else f"`asr-pipeline backfill {keys}` (or check that the daemon runs: `make ui`)")
    return FreshnessResult(BATCHES_DONE, False, f"{plural_batches(len(late))} registered more than "
                           f"{limits.max_pending_hours:g} h ago are not done: " + "; ".join(lines) + f". Fix: {fix}",
                           "ERROR", batches, fix)


def check_training_keeps_up(waiting: list[tuple[str, float]], last_training: float | None, limits: FreshnessLimits,
                            now: float) -> FreshnessResult:
    limit_s = limits.max_training_lag_days * DAY_S
    late = [(key, ts) for key, ts in waiting if now - ts > limit_s]
    if not late:
        return FreshnessResult(TRAINING_KEEPS_UP, True, f"no featurized data has waited more than "
                               f"{limits.max_training_lag_days:g} days for training ({plural_batches(len(waiting))} "
                               f"newer than the last training, {when(last_training)})")
    batches = [{"batch": key, "featurized_at": when(ts), "days": round((now - ts) / DAY_S, 1)} for key, ts in late]
    fix = ("turn on the schedule nightly_retraining (Automation page) or run `asr-pipeline run`; if its runs fail, "
           "the run-failure alert says why")
    oldest = batches[0]
    return FreshnessResult(TRAINING_KEEPS_UP, False, f"{plural_batches(len(late))} featurized since the last training "
                           f"(started {when(last_training)}) have waited more than {limits.max_training_lag_days:g} "
                           f"days: oldest {oldest['batch']}, featurized {oldest['featurized_at']} ({oldest['days']} "
                           f"days ago). Fix: {fix}", "ERROR", batches, fix)


def check_decision_recent(last_decision: float | None, first_data: float | None, limits: FreshnessLimits,
                          now: float) -> FreshnessResult:
    limit_s = limits.max_decision_lag_days * DAY_S
    since = last_decision if last_decision is not None else first_data
    if since is None or now - since <= limit_s:
        return FreshnessResult(DECISION_RECENT, True, f"last promotion decision {when(last_decision)} (limit "
                               f"{limits.max_decision_lag_days:g} days)")
    fix = ("run `asr-pipeline run` (train, evaluate, decide); if nightly_retraining skips because no batch changed, "
           "no new transcripts arrived: check new_transcripts_sensor and the source table")
    what = (f"the last promotion decision was {when(last_decision)}" if last_decision is not None
            else f"no promotion decision was ever made; data is featurized since {when(first_data)}")
    return FreshnessResult(DECISION_RECENT, False, f"{what}, more than {limits.max_decision_lag_days:g} days ago "
                           f"({(now - since) / DAY_S:.1f} days). Fix: {fix}", "WARN", [], fix)


def evaluate_freshness(instance: dg.DagsterInstance, limits: FreshnessLimits, now: float,
                       states: list[sources.BatchState] | None = None) -> list[FreshnessResult]:
    states = sources.batch_states(instance) if states is None else states
    checkpoint = instance.get_latest_materialization_event(dg.AssetKey("finetuned_checkpoint"))
    return [
        check_batches_done(states, limits, now),
        check_training_keeps_up(sources.batches_changed_since_training(instance),
                                checkpoint.timestamp if checkpoint else None, limits, now),
        check_decision_recent(sources.last_decision_time(instance), sources.first_featurized_time(instance), limits,
                              now),
    ]


def freshness_status(instance: dg.DagsterInstance, now: float | None = None) -> dict:
    """For `asr-pipeline status --json`: each freshness check, evaluated now."""
    results = evaluate_freshness(instance, FreshnessLimits.from_environment(), time.time() if now is None else now)
    return {r.check: r.as_dict() for r in results}


def _check(name: str, description: str):
    @dg.asset_check(name=name, asset=CHECK_ASSETS[name], blocking=False, description=description)
    def _evaluate(context) -> dg.AssetCheckResult:  # context: AssetCheckExecutionContext
        result = next(r for r in evaluate_freshness(context.instance, FreshnessLimits.from_environment(), time.time())
                      if r.check == name)
        evaluation = result.to_evaluation()
        return dg.AssetCheckResult(passed=result.passed, severity=evaluation.severity,
                                   description=result.description, metadata=evaluation.metadata)
    return _evaluate


FRESHNESS_CHECKS = [
    _check(BATCHES_DONE, "Every ingest batch registered more than ASR_MAX_PENDING_HOURS (24) ago is done "
                         "(featurized)."),
    _check(TRAINING_KEEPS_UP, "No featurized data newer than what the last training read has waited more than "
                              "ASR_MAX_TRAINING_LAG_DAYS (2) days."),
    _check(DECISION_RECENT, "A promotion decision (promoted or not) was made within ASR_MAX_DECISION_LAG_DAYS (7) "
                            "days."),
]


def without_freshness_checks(assets: list[str]) -> dg.AssetSelection:
    """A job's selection: its assets with their own (blocking) checks, but not these, which read the whole
    instance and belong to no run of a batch."""
    return dg.AssetSelection.assets(*assets) - dg.AssetSelection.checks(*FRESHNESS_CHECKS)
