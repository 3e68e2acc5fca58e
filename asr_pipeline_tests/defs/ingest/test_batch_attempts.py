"""Counting a batch's failed attempts from its run records, where Dagster's run retries make each attempt up to three
runs: the back-off must still reach its one-day cap. No database: run records as the instance returns them."""

import datetime as dt
import uuid
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from asr_pipeline.core.batches import FREE_RETRIES, MAX_RETRY_BACKOFF_S, retry_due
from asr_pipeline.defs.ingest.batch_states import AUTO_RETRY_RUN_TAG, WILL_RETRY_TAG, _state
from asr_pipeline_tests.defs.sensor_harness import job_origin

KEY = "ids-0000000001-0000000010"
RETRIES_PER_ATTEMPT = 2  # run_retries.max_retries in the instance's dagster.yaml (cli.INSTANCE_CONFIG)


def _record(failed_at: float, retried_by: str | None) -> SimpleNamespace:
    """A failed run: retried_by set, Dagster's run retry re-executed it; None, the attempt's last run."""
    tags = {"dagster/partition": KEY}
    if retried_by:
        tags.update({WILL_RETRY_TAG: "true", AUTO_RETRY_RUN_TAG: retried_by})
    run = DagsterRun(job_name="asr_ingest", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.FAILURE, tags=tags)
    return SimpleNamespace(dagster_run=run, end_time=failed_at,
                           update_timestamp=dt.datetime.fromtimestamp(failed_at, dt.timezone.utc))


def _attempts(count: int, now: float) -> list[SimpleNamespace]:
    """`count` failed attempts a day apart, each a run and its two automatic retries; newest first."""
    records = []
    for attempt in range(count):
        started = now - (count - attempt) * 86400.0
        runs = [_record(started + i, retried_by="next") for i in range(RETRIES_PER_ATTEMPT)]
        runs.append(_record(started + RETRIES_PER_ATTEMPT, retried_by=None))
        records.extend(runs)
    return list(reversed(records))


def test_every_failed_attempt_counts_once_and_the_wait_reaches_a_day():
    now = 1_800_000_000.0
    state = _state(KEY, _attempts(12, now), processed=None, fingerprint="f", now=now)
    assert state.state == "failed" and not state.running
    assert state.failures == 12  # not 7: each attempt's three runs are looked at
    assert retry_due(state.failures, state.last_failure_at, state.last_failure_at) \
        == state.last_failure_at + MAX_RETRY_BACKOFF_S


def test_the_quick_retries_count_attempts_not_runs():
    now = 1_800_000_000.0
    state = _state(KEY, _attempts(FREE_RETRIES - 1, now), processed=None, fingerprint="f", now=now)
    assert state.failures == FREE_RETRIES - 1
    assert retry_due(state.failures, state.last_failure_at, now) is None  # still a quick retry


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                    dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                                    dg.DagsterRunStatus.CANCELING])
def test_a_batch_whose_run_waits_in_the_queue_or_runs_is_running_not_failed(status):
    """A run waiting for the daemon's queue (QUEUED, the state of every run the sensor submits under a concurrency
    limit) holds its batch as running, after earlier failures too, so nothing requests it again meanwhile."""
    now = 1_800_000_000.0
    run = DagsterRun(job_name="asr_ingest", run_id=str(uuid.uuid4()), status=status,
                     tags={"dagster/partition": KEY}, remote_job_origin=job_origin("asr_ingest"))
    latest = SimpleNamespace(dagster_run=run, end_time=None,
                             update_timestamp=dt.datetime.fromtimestamp(now, dt.timezone.utc))
    state = _state(KEY, [latest, *_attempts(2, now)], processed=None, fingerprint="f", now=now)
    assert state.running and state.state == "pending"
    assert state.reason == f"run {run.run_id} is {status.value.lower()}"
