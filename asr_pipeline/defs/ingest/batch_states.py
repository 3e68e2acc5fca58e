"""Where each ingest batch stands, read from the Dagster instance's catalog (materializations, run records, asset
check evaluations), never from directories: what `asr-pipeline status --json` lists, what new_transcripts_sensor
re-requests, and what training reports it could not use.

States:
- done: a featurized_shards materialization exists for the batch's current content (the fingerprint the latest
  raw_manifest was made from equals the table's now, and the features are newer than that manifest).
- pending: not done yet and nothing went wrong: never processed, its content changed, or a run (or an automatic
  retry) is queued or running.
- failed: its latest run failed after its retries (NAS outage, out of memory, a crash); `failures` counts the failed
  attempts since its last success. Requested again at once for the first three attempts, then after waits that
  double from an hour to a day (core.batches.retry_due).
- blocked: its latest run was stopped by a blocking asset check (quarantine rate, near-silent or cancelled clips
  above that rate, 16 kHz audio, feature shapes);
  the reason is the check's. Requested again when its rows change, else after waits that double from an hour to a
  day.
- stale: done, but made with settings or code that have changed since (reasons from asr_pipeline.defs.common.versions).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import dagster as dg

from asr_pipeline.core.batches import FREE_RETRIES, parse_batch_key, retry_due
from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline.defs.ingest.run_failures import why_it_failed

STATES = ("done", "pending", "failed", "blocked", "stale")
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run the retry daemon will re-execute
AUTO_RETRY_RUN_TAG = "dagster/auto_retry_run_id"  # set once that re-execution exists
FINGERPRINT_TAG = "asr/fingerprint"  # on runs the sensor requests: the content they were requested for
# newest runs of a batch read to count its consecutive failed attempts. An attempt is up to 3 runs (the instance's
# run_retries.max_retries is 2), and the back-off reaches its one-day cap at the 8th failed attempt: 40 runs see 13
RUNS_LOOKED_AT = 40
RETRY_GRACE_S = 600.0  # a failed run marked will_retry whose retry has not appeared after this long will not get one
ACTIVE = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.MANAGED}
UNSUCCESSFUL = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class BatchState:
    key: str
    state: str  # one of STATES
    reason: str
    registered_at: float | None = None  # unix seconds
    failures: int = 0  # failed attempts since the last success (an attempt = a run and its automatic retries)
    last_run_id: str | None = None
    runs: int = 0  # runs recorded for the batch (a new attempt gets a new run key)
    fingerprint: str | None = None  # the batch's content in the table now (None: not read)
    processed_fingerprint: str | None = None  # the content its features were made from
    last_failure_at: float | None = None
    last_run_fingerprint: str | None = None  # the content the latest run was requested for (tag asr/fingerprint)
    retry_at: float | None = None  # failed/blocked: when the sensor requests it again (None: at its next check)
    running: bool = False  # a run or an automatic retry is queued or in progress

    def as_dict(self) -> dict:
        return asdict(self)


def registered_batches(instance: dg.DagsterInstance) -> list[str]:
    return sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name))


def registration_times(instance: dg.DagsterInstance) -> dict[str, float]:
    """When each batch was registered (the dynamic partitions table's create_timestamp, UTC); {} where the storage
    does not say."""
    try:
        from dagster._core.storage.event_log.schema import DynamicPartitionsTable as table
        from dagster._core.storage.sqlalchemy_compat import db_select

        import sqlalchemy as sa

        with instance.event_log_storage.index_connection() as conn:
            # MySQL stores CURRENT_TIMESTAMP in the session's time zone: UNIX_TIMESTAMP turns it back into seconds
            mysql = conn.dialect.name == "mysql"
            created = sa.func.unix_timestamp(table.c.create_timestamp) if mysql else table.c.create_timestamp
            query = (db_select([table.c.partition, created])
                     .where(table.c.partitions_def_name == INGEST_BATCHES.name))
            rows = conn.execute(query).fetchall()
    except Exception:  # a storage without that table (not SQL): the times are a nicety, not needed
        return {}
    return {key: float(when) if mysql else _utc_seconds(when) for key, when in rows if when is not None}


def _utc_seconds(when) -> float:
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _chunks(keys: list[str], size: int = 500):
    for start in range(0, len(keys), size):
        yield keys[start:start + size]


def processed_fingerprints(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str | None]:
    """For each batch, the fingerprint of the content its features were made from; None when the chain never
    reached featurized_shards after the latest raw_manifest (a run failed or was killed part way). Three queries
    for any number of batches: the latest storage ids of both assets by partition, then those manifests' metadata."""
    storage, kind = instance.event_log_storage, dg.DagsterEventType.ASSET_MATERIALIZATION
    result: dict[str, str | None] = dict.fromkeys(keys)
    for chunk in _chunks(list(keys)):
        manifests = storage.get_latest_storage_id_by_partition(dg.AssetKey("raw_manifest"), kind, set(chunk))
        shards = storage.get_latest_storage_id_by_partition(dg.AssetKey("featurized_shards"), kind, set(chunk))
        complete = [sid for key, sid in manifests.items() if shards.get(key, -1) > sid]
        if not complete:
            continue
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_manifest"), storage_ids=complete),
            limit=len(complete)).records
        for record in records:
            entry = record.asset_materialization.metadata.get("fingerprint")
            result[record.event_log_entry.dagster_event.partition] = str(entry.value) if entry is not None else None
    return result


def processed_fingerprint(instance: dg.DagsterInstance, key: str) -> str | None:
    return processed_fingerprints(instance, [key])[key]


def _runs_by_batch(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, list]:
    """Every run record of these batches, newest first, in one query per 500 batches."""
    runs: dict[str, list] = {key: [] for key in keys}
    for chunk in _chunks(list(keys)):
        for record in instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: chunk})):
            key = record.dagster_run.tags.get(PARTITION_TAG)
            if key in runs:
                runs[key].append(record)
    return runs


def _final_failure(record, now: float) -> bool:
    """A failed or canceled run that Dagster will not retry by itself (or whose retry already exists). Dagster marks
    a failed run will_retry even where its retry daemon cannot re-launch it (a run executed in-process by the CLI has
    no code location origin), and a daemon that is not running never retries: such a run counts as final too, and
    so does one still waiting for its retry RETRY_GRACE_S after it failed."""
    run = record.dagster_run
    if run.status not in UNSUCCESSFUL:
        return False
    if run.tags.get(WILL_RETRY_TAG) != "true" or AUTO_RETRY_RUN_TAG in run.tags or run.remote_job_origin is None:
        return True
    ended = record.end_time or record.update_timestamp.timestamp()
    return now - ended > RETRY_GRACE_S


def batch_state(instance: dg.DagsterInstance, key: str, table: TranscriptTable | None = None,
                stale_reason: str | None = None, registered_at: float | None = None,
                now: float | None = None) -> BatchState:
    """The state of one batch (see batch_states)."""
    return batch_states(instance, [key], table, {key: stale_reason} if stale_reason else None, now,
                        {key: registered_at} if registered_at else None)[0]


def _state(key: str, records: list, processed: str | None, fingerprint: str | None, now: float) -> BatchState:
    """Everything but the failure's reason, from the batch's run records (newest first) and fingerprints."""
    state = BatchState(key, "pending", "", runs=len(records), fingerprint=fingerprint,
                       processed_fingerprint=processed)
    latest = records[0] if records else None
    state.last_run_id = latest.dagster_run.run_id if latest else None
    state.last_run_fingerprint = latest.dagster_run.tags.get(FINGERPRINT_TAG) if latest else None
    for record in records[:RUNS_LOOKED_AT]:
        if record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
            break
        # an attempt is a run and its automatic retries: a failed run whose retry was launched is not its end
        if _final_failure(record, now) and AUTO_RETRY_RUN_TAG not in record.dagster_run.tags:
            state.failures += 1
            if state.last_failure_at is None:
                state.last_failure_at = (record.end_time or record.update_timestamp.timestamp())
    state.running = bool(latest) and (latest.dagster_run.status in ACTIVE or (
        latest.dagster_run.status in UNSUCCESSFUL and not _final_failure(latest, now)))
    if processed is not None and (fingerprint is None or fingerprint == processed):
        state.state, state.reason = "done", f"features of its current content exist (fingerprint {processed})"
    elif state.running:
        status = latest.dagster_run.status
        state.reason = f"run {state.last_run_id} is " + (
            "failed and about to be retried" if status in UNSUCCESSFUL else status.value.lower())
    elif latest is not None and _final_failure(latest, now):
        state.state = "failed"  # or blocked: the caller reads why from the run's events
    elif processed is None:
        state.reason = "never processed" if latest is None else "its latest processing did not reach featurized_shards"
    else:
        state.reason = f"its rows changed since it was processed (fingerprint {processed} -> {fingerprint})"
    return state


def batch_states(instance: dg.DagsterInstance, keys: Iterable[str] | None = None,
                 table: TranscriptTable | None = None, stale_reasons: Mapping[str, str] | None = None,
                 now: float | None = None, registered_at: Mapping[str, float] | None = None) -> list[BatchState]:
    """Every registered batch (or `keys`), in key order; see the module's docstring for the states. With `table`,
    each batch's current fingerprint is read from the database (one range query each), so a batch whose rows
    changed since it was processed is pending, not done. The catalog is read in a few queries for all batches."""
    chosen = registered_batches(instance) if keys is None else sorted(keys)
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    times = registration_times(instance) if registered_at is None else registered_at
    stale_reasons = stale_reasons or {}
    runs = _runs_by_batch(instance, chosen)
    processed = processed_fingerprints(instance, chosen)
    states = []
    for key in chosen:
        fingerprint = table.batch_fingerprint(*parse_batch_key(key)) if table is not None else None
        state = _state(key, runs[key], processed[key], fingerprint, now)
        state.registered_at = times.get(key)
        if state.state == "done" and stale_reasons.get(key):
            state.state, state.reason = "stale", stale_reasons[key]
        elif state.state == "failed":
            state.state, why = why_it_failed(instance, state.last_run_id)
            # a blocking check fails the same way on the same rows: retried after an hour from the first time (files
            # restored on the NAS, say) or at once when its rows change; other failures get quick retries first
            free = 0 if state.state == "blocked" else FREE_RETRIES
            state.retry_at = retry_due(state.failures, state.last_failure_at, now, free_retries=free)
            plural = "s" if state.failures != 1 else ""
            state.reason = f"{why} ({state.failures} failed attempt{plural}, latest run {state.last_run_id})"
        states.append(state)
    return states


def failed_since(instance: dg.DagsterInstance, since: float | None, limit: int = 100) -> list[str]:
    """Batches with a run that failed (or was canceled) since `since`: checked by the next sensor tick at once, so a
    failure is re-requested without waiting for the rotation."""
    if since is None:
        return []
    records = instance.get_run_records(
        dg.RunsFilter(statuses=sorted(UNSUCCESSFUL, key=lambda s: s.value),
                      updated_after=dt.datetime.fromtimestamp(since, dt.timezone.utc)), limit=limit)
    return sorted({r.dagster_run.tags[PARTITION_TAG] for r in records if PARTITION_TAG in r.dagster_run.tags})
