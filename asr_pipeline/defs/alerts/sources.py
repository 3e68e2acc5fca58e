"""What the alerts and freshness checks read from the Dagster instance: one small function per input.

Three of them stand in for seams other parts of the pipeline own (INTERFACES.md) and are meant to be pointed there:
  batch_states                      -> asr_pipeline.defs.batch_states.batch_states(instance, ...)
  batches_changed_since_training    -> asr_pipeline.defs.schedules.batches_changed_since_training(instance)
  latest_decision                   -> report.json["promotion"] as the promotion gate writes it (blocked_by)
They compute the same answers from the instance directly, simply; the rest of this package only calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

import dagster as dg
from dagster import DagsterEventType, DagsterRunStatus

from asr_pipeline.core.storage import read_json
from asr_pipeline.defs.partitions import INGEST_BATCHES

RECENT_FAILURES = 500  # failed runs a tick looks at to find featurized batches whose re-processing failed
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
FAILED_STEP_EVENTS = {DagsterEventType.STEP_FAILURE, DagsterEventType.ASSET_CHECK_EVALUATION}


@dataclass(frozen=True)
class BatchState:
    """The fields of asr_pipeline.defs.batch_states.BatchState (INTERFACES.md)."""

    key: str
    state: str                 # done | pending | failed | blocked | stale
    reason: str
    registered_at: float | None
    failures: int
    last_run_id: str | None


@dataclass(frozen=True)
class RunFailure:
    run_id: str
    asset: str                 # the step (asset) that failed, or the job when no step did
    error: str                 # the first line of the error
    failed_checks: tuple[dict, ...]  # {check, asset, metadata} of blocking checks that failed


def _registration_times(instance: dg.DagsterInstance) -> dict[str, float]:
    """When each ingest batch was registered: the dynamic partitions table's create_timestamp. Dagster has no public
    reader for it, so this reads the table through the event log storage (and returns {} for other storages). The
    column is the database's CURRENT_TIMESTAMP: UTC in SQLite, the session's time zone in MySQL (UNIX_TIMESTAMP
    converts it back)."""
    import sqlalchemy as sa
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable
    from dagster._core.storage.sqlalchemy_compat import db_select

    storage = instance.event_log_storage
    if not hasattr(storage, "index_connection"):
        return {}
    column = DynamicPartitionsTable.c.create_timestamp
    with storage.index_connection() as conn:
        mysql = conn.dialect.name == "mysql"
        query = db_select([DynamicPartitionsTable.c.partition, sa.func.unix_timestamp(column) if mysql else column])
        rows = conn.execute(query.where(DynamicPartitionsTable.c.partitions_def_name == INGEST_BATCHES.name)).fetchall()
    return {key: float(created) if mysql else created.replace(tzinfo=timezone.utc).timestamp()
            for key, created in rows if created is not None}


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
            if not evaluation.passed and evaluation.blocking is not False:
                checks.append({"check": evaluation.check_name, "asset": evaluation.asset_key.to_user_string(),
                               "description": evaluation.description,
                               "metadata": {k: v.value for k, v in evaluation.metadata.items()}})
    if not asset:
        run = instance.get_run_by_id(run_id)
        asset = run.job_name if run else "?"
        error = error or "the run failed before any step did (see the run's events)"
    return RunFailure(run_id, asset, error, tuple(checks))


def latest_failed_run(instance: dg.DagsterInstance, **filters) -> str | None:
    records = instance.get_run_records(dg.RunsFilter(statuses=[DagsterRunStatus.FAILURE], **filters), limit=1)
    return records[0].dagster_run.run_id if records else None


def _batches_to_inspect(instance: dg.DagsterInstance, keys: list[str]) -> set[str]:
    """Batches whose runs must be looked at: never featurized, or among the most recent failed runs. Every other
    registered batch is done, so a tick costs a few queries rather than three per batch."""
    featurized = instance.get_materialized_partitions(dg.AssetKey("featurized_shards"))
    failed = instance.get_run_records(dg.RunsFilter(statuses=[DagsterRunStatus.FAILURE]), limit=RECENT_FAILURES)
    recent = {r.dagster_run.tags.get("dagster/partition") for r in failed}
    return {key for key in keys if key not in featurized or key in recent}


def batch_states(instance: dg.DagsterInstance) -> list[BatchState]:
    """Every registered ingest batch with the state of its latest asr_ingest run (stand-in, see the module doc)."""
    registered = _registration_times(instance)
    keys = instance.get_dynamic_partitions(INGEST_BATCHES.name)
    inspect = _batches_to_inspect(instance, keys)
    states = []
    for key in keys:
        if key not in inspect:
            states.append(BatchState(key, "done", "", registered.get(key), 0, None))
            continue
        runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}), limit=20)
        last = runs[0].dagster_run if runs else None
        finished = [r.dagster_run.status for r in runs if r.dagster_run.status in FINISHED]
        failures = next((i for i, status in enumerate(finished) if status != DagsterRunStatus.FAILURE),
                        len(finished))  # failed runs since the last success; a retry in flight does not reset it
        done = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("featurized_shards"), asset_partitions=[key]), limit=1).records
        if last is None or last.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING,
                                           DagsterRunStatus.STARTED, DagsterRunStatus.NOT_STARTED):
            state = "pending"
            reason = "waiting for its ingest run" if last is None else f"run {last.run_id} {last.status.value.lower()}"
        elif last.status == DagsterRunStatus.SUCCESS and done:
            state, reason = "done", ""
        elif last.status == DagsterRunStatus.SUCCESS:
            state, reason = "pending", "its last run did not materialize featurized_shards"
        else:
            failure = run_failure(instance, last.run_id)
            state = "blocked" if failure.failed_checks else "failed"
            reason = failure.error
        first_run = runs[-1].create_timestamp.timestamp() if runs else None
        states.append(BatchState(key, state, reason, registered.get(key, first_run), failures,
                                 last.run_id if last else None))
    return states


def batches_changed_since_training(instance: dg.DagsterInstance) -> list[tuple[str, float]]:
    """(batch, time of its first featurized_shards materialization after the latest training started), oldest
    first: data the current checkpoint has not read (stand-in, see the module doc)."""
    checkpoint = instance.get_latest_materialization_event(dg.AssetKey("finetuned_checkpoint"))
    since = None
    if checkpoint is not None:
        record = instance.get_run_record_by_id(checkpoint.run_id) if checkpoint.run_id else None
        since = (record.start_time if record and record.start_time else None) or checkpoint.timestamp
    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("featurized_shards"), after_timestamp=since), limit=10_000, ascending=True).records
    first: dict[str, float] = {}
    for record in records:
        first.setdefault(record.partition_key or "", record.timestamp)
    return sorted(first.items(), key=lambda item: item[1])


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
