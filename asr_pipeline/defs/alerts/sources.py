"""What the alerts and freshness checks read from the Dagster instance: one small function per input.

Batch states come from asr_pipeline.defs.ingest.batch_states and the training lag from nightly_retraining's own
comparison (asr_pipeline.defs.training.schedules), so an alert never disagrees with `asr-pipeline status` or the schedule;
the latest decision is report.json["promotion"] as the promotion gate writes it (blocked_by).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster import DagsterEventType, DagsterRunStatus

from asr_pipeline.core.storage import read_json
from asr_pipeline.defs.ingest.batch_states import BatchState  # noqa: F401  (the type the alerts read)
from asr_pipeline.defs.ingest.run_failures import process_death, stopped_the_run

FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
FAILED_STEP_EVENTS = {DagsterEventType.STEP_FAILURE, DagsterEventType.ASSET_CHECK_EVALUATION}


@dataclass(frozen=True)
class RunFailure:
    run_id: str
    asset: str                 # the step (asset) that failed, or the job when no step did
    error: str                 # the first line of the error
    failed_checks: tuple[dict, ...]  # {check, asset, metadata} of blocking checks that failed


def run_failure(instance: dg.DagsterInstance, run_id: str) -> RunFailure:
    """Which step failed, with what, and which blocking checks failed, from the run's event log."""
    asset, error, checks = "", "", []
    records = instance.get_records_for_run(run_id, of_type=FAILED_STEP_EVENTS).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event.event_type == DagsterEventType.STEP_FAILURE and not asset:
            asset = event.step_key or ""
            info = event.step_failure_data.error
            while info is not None and info.cause is not None:  # the user's exception, not Dagster's wrapper
                info = info.cause
            error = (info.message if info else event.message or "").strip().splitlines()[0:1]
            error = error[0] if error else "(no error message)"
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.asset_check_evaluation_data
            if stopped_the_run(evaluation):
                checks.append({"check": evaluation.check_name, "asset": evaluation.asset_key.to_user_string(),
                               "description": evaluation.description,
                               "metadata": {k: v.value for k, v in evaluation.metadata.items()}})
    if not asset:
        run = instance.get_run_by_id(run_id)
        canceled = run is not None and run.status == DagsterRunStatus.CANCELED
        death = None if canceled else process_death(instance, run_id)
        asset = death[0] if death else (run.job_name if run else "?")
        if canceled:
            error = error or "the run was canceled (from the UI, or by the run monitor after a worker died)"
        if death and not error:
            error = death[1]
        error = error or "the run failed before any step did (see the run's events)"
    return RunFailure(run_id, asset, error, tuple(checks))


def latest_failed_run(instance: dg.DagsterInstance, **filters) -> str | None:
    records = instance.get_run_records(dg.RunsFilter(statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
                                                     **filters), limit=1)
    return records[0].dagster_run.run_id if records else None


def batch_states(instance: dg.DagsterInstance):
    """Every registered ingest batch with its state (asr_pipeline.defs.ingest.batch_states: the same answer as
    `asr-pipeline status` and the sensor's back-off)."""
    from asr_pipeline.defs.ingest.batch_states import batch_states as states_from_catalog

    return states_from_catalog(instance)


def batches_changed_since_training(instance: dg.DagsterInstance) -> list[tuple[str, float]]:
    """(batch, time of its newer featurized_shards materialization), oldest first: data the current checkpoint has
    not read (what nightly_retraining decides on)."""
    from asr_pipeline.defs.training.schedules import batches_changed_since_training as changed

    return changed(instance)


def last_decision_time(instance: dg.DagsterInstance) -> float | None:
    """When the last promotion decision (promoted or not) was made: the latest evaluation_report."""
    event = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report"))
    return event.timestamp if event else None


def first_featurized_time(instance: dg.DagsterInstance) -> float | None:
    records = instance.fetch_materializations(dg.AssetKey("featurized_shards"), limit=1, ascending=True).records
    return records[0].timestamp if records else None


def latest_decision(home: Path) -> dict | None:
    """The latest report's promotion decision, with `blocked_by` as the promotion gate writes it ([] before)."""
    path = Path(home) / "storage" / "evaluation_report" / "report.json"
    if not path.exists():
        return None
    report = read_json(path)
    decision = dict(report.get("promotion") or {})
    decision.setdefault("blocked_by", [])
    decision["created_at"] = report.get("created_at")
    decision["train_rows"] = report.get("train_rows")
    return decision
