"""The ingest plan against a Dagster instance: shared by new_transcripts_sensor and `asr-pipeline ingest`.

A plan (1) cuts and registers new batches under the planning lock, so two planners never cut overlapping id ranges,
and (2) checks existing batches against the instance's catalog (asr_pipeline.defs.ingest.batch_states): a batch whose
content changed, whose processing never reached featurized_shards, or whose latest run failed is requested again,
a failed one with a bounded back-off. The sensor checks a rotation of ASR_CHECK_BATCHES_PER_TICK batches plus those
with a run that failed since its last tick; the CLI checks every batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import dagster as dg

from asr_pipeline.core.batches import (BatchRequest, IngestCursor, NewBatches, cut_new_batches, parse_batch_key,
                                       rotation_slice, utc_text)
from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.core.locks import planning_lock
from asr_pipeline.defs.ingest.batch_states import (FINGERPRINT_TAG, BatchState, batch_states, failed_since,
                                            registered_batches)
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline.defs.common.resources import PipelineSettings

INGEST_TAGS = {"asr/stage": "ingest"}
clock = time.time  # the planner's notion of now (benchmarks/loop_simulation.py runs a simulated day on its own)


@dataclass
class IngestPlan:
    new_keys: list[str]
    requests: list[BatchRequest]
    checked: list[BatchState]
    cursor: IngestCursor
    pending: str = ""  # what waits above the high-water mark
    waiting: list[BatchState] = field(default_factory=list)  # failed or blocked batches in their back-off

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.requests:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        parts = [", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "nothing to do"]
        for state in self.waiting:
            due = utc_text(state.retry_at)
            parts.append(f"{state.key} {state.state} ({state.failures} attempts), next attempt after {due}: "
                         f"{state.reason}")
        parts.append(f"{len(self.checked)} existing batches checked")
        parts.append(self.pending)
        return "; ".join(p for p in parts if p)


def request_for(state: BatchState, ignore_backoff: bool = False) -> BatchRequest | None:
    """What to request for a checked batch, or None (done, stale, running, or failed and waiting out its back-off).
    Stale batches are re-processed by `asr-pipeline backfill --stale`, not by the sensor."""
    if state.state in ("done", "stale") or state.running:
        return None
    fingerprint = state.fingerprint or ""
    if state.state in ("failed", "blocked"):
        changed = state.last_run_fingerprint is not None and state.last_run_fingerprint != fingerprint
        if changed:  # its rows changed since the failed run: that may be the fix, try at once
            return BatchRequest(state.key, fingerprint, "changed", state.runs)
        due = state.retry_at is None or ignore_backoff
        return BatchRequest(state.key, fingerprint, "retry", state.runs) if due else None
    reason = "not materialized" if state.processed_fingerprint is None else "changed"
    return BatchRequest(state.key, fingerprint, reason, state.runs)


def _high_water(cursor: IngestCursor, registered: Iterable[str]) -> int:
    return max([cursor.high_water, *(parse_batch_key(k)[1] for k in registered)])


def cut_and_register(instance: dg.DagsterInstance, table: TranscriptTable, settings: PipelineSettings,
                     cursor: IngestCursor, max_wait_s: float, now: float) -> tuple[NewBatches, list[str]]:
    """Under the planning lock: the high-water mark from the registered batches, new batches cut above it and
    registered. The partitions are added here, inside the lock, rather than returned in a SensorResult (the daemon
    would add those after the sensor returns, outside any lock). Returns the cut and the batches registered before."""
    def cut(registered: list[str]) -> NewBatches:
        return cut_new_batches(table, _high_water(cursor, registered), settings.batch_rows, max_wait_s, now,
                               cursor.pending_since, cursor.pending_upto)

    registered = registered_batches(instance)
    preview = cut(registered)
    if not preview.ranges:  # nothing to cut (most ticks): no lock needed, nothing is registered
        return preview, registered
    with planning_lock(table, Path(settings.home)):
        registered = registered_batches(instance)  # what another planner registered meanwhile counts
        new = cut(registered)
        if new.keys:
            instance.add_dynamic_partitions(INGEST_BATCHES.name, new.keys)
    return new, registered


def plan_ingest(instance: dg.DagsterInstance, table: TranscriptTable, settings: PipelineSettings,
                cursor: IngestCursor | None = None, check_all: bool = False, max_wait_s: float | None = None,
                now: float | None = None) -> IngestPlan:
    """Cut, register, and decide what to (re)process. check_all: every registered batch (the CLI), else a rotation
    of settings.check_batches_per_tick plus the batches with a run that failed since the cursor's last tick, and
    failed batches wait out their back-off (the CLI, run by a person, retries them at once)."""
    cursor = cursor or IngestCursor()
    now = clock() if now is None else now
    wait = settings.batch_max_wait_minutes * 60 if max_wait_s is None else max_wait_s
    # the next tick looks for runs that failed after this instant: taken before this tick reads them, so a run that
    # fails while it plans is seen by the next one (wall clock, as the run records' times are, even when `now` is not)
    tick_started = time.time()
    new, registered = cut_and_register(instance, table, settings, cursor, wait, now)
    requests = [BatchRequest(key, table.batch_fingerprint(first, last), "new")
                for key, (first, last) in zip(new.keys, new.ranges)]
    if check_all:
        to_check, rotation = list(registered), 0
    else:
        to_check, rotation = rotation_slice(registered, cursor.rotation, settings.check_batches_per_tick)
        known = set(registered)
        to_check += [k for k in failed_since(instance, cursor.last_tick) if k in known and k not in to_check]
    checked, waiting = batch_states(instance, to_check, table, now=now, registered_at={}), []
    for state in checked:
        request = request_for(state, ignore_backoff=check_all)
        if request is not None:
            requests.append(request)
        elif state.state in ("failed", "blocked") and not state.running:
            waiting.append(state)
    next_cursor = IngestCursor(new.high_water, rotation, new.pending_since, new.pending_upto, tick_started)
    return IngestPlan(new.keys, requests, checked, next_cursor,
                      new.describe(now, wait, settings.batch_rows), waiting)


def request_lines(plan: IngestPlan) -> list[str]:
    """Why each existing batch is requested again (for the tick's reason and log)."""
    states = {s.key: s for s in plan.checked}
    return [f"{r.key} {r.reason}: {states[r.key].reason}" for r in plan.requests if r.key in states]


def request_tags(plan: IngestPlan) -> dict[str, dict[str, str]]:
    """The tags of each requested batch's run, by batch key: why it runs and for which content (FINGERPRINT_TAG,
    which tells the next plan whether the rows changed since a failed run). The sensor's runs and the CLI's carry
    the same."""
    states = {s.key: s for s in plan.checked}
    return {r.key: {**INGEST_TAGS, "asr/reason": r.reason, FINGERPRINT_TAG: r.fingerprint,
                    "asr/attempt": str(r.attempt),
                    "asr/why": states[r.key].reason[:250] if r.key in states else "new rows"}
            for r in plan.requests}


def backfill_tags(table: TranscriptTable, key: str, why: str) -> dict[str, str]:
    """A backfilled batch's run tags: like a planned request's, with the batch's fingerprint read now."""
    return {**INGEST_TAGS, "asr/reason": "backfill", FINGERPRINT_TAG: table.batch_fingerprint(*parse_batch_key(key)),
            "asr/why": why[:250]}


def run_requests(plan: IngestPlan) -> list[dg.RunRequest]:
    tags = request_tags(plan)
    return [dg.RunRequest(run_key=r.run_key, partition_key=r.key, tags=tags[r.key]) for r in plan.requests]
