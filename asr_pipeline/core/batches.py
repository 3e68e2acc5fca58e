"""Ingest batches: immutable id ranges of the transcript table, and when to cut new ones.

A batch key carries its id range, `ids-0000000001-0000010000`: rows first <= id <= last. Batches are contiguous: a new
batch starts right after the end of the last registered one (the very first at the table's first id), so every id,
even one whose insert commits late with a lower id than rows already cut, lies in exactly one batch; a late row
changes its batch's fingerprint and the batch is processed again.

Rows above the high-water mark are *pending*. A batch is cut when `batch_rows` rows are pending, or when the oldest
pending row was first seen `max_wait_s` ago (0: every tick), so rows trickling in a few at a time do not become a
partition, and a run, per tick. Each batch has a fingerprint computed by the database (row count plus
MAX(updated_at), or plus SUM(CRC32(path|transcript))): when it differs from the one the batch was processed from (a
corrected transcript, a deleted row) the batch is processed again. What was processed, what failed and when lives in
the Dagster instance (asr_pipeline.defs.ingest.batch_states); the sensor's cursor holds a few numbers only, however many
batches exist. Planning and registration run under one lock (asr_pipeline.core.locks), so the sensor and
`asr-pipeline ingest` never cut overlapping batches.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from asr_pipeline.core.database import TranscriptTable

KEY_PATTERN = re.compile(r"^ids-(\d{10})-(\d{10})$")
FREE_RETRIES = 3  # failed attempts re-requested at once; after that the wait doubles from RETRY_BACKOFF_S
RETRY_BACKOFF_S = 3600.0  # the first wait: a NAS back after an hour's outage is picked up within the hour
MAX_RETRY_BACKOFF_S = 86400.0  # the longest wait: a batch broken for good costs one attempt a day, not 24


MAX_ROW_ID = 9_999_999_999  # ten digits: keys sort in id order and parse_batch_key reads them


def batch_key(first_id: int, last_id: int) -> str:
    """Refuses ids past MAX_ROW_ID (a BIGINT key of timestamp-shaped ids): a wider key registered once would make
    every later tick fail to parse it."""
    if not 0 <= first_id <= last_id <= MAX_ROW_ID:
        raise ValueError(f"row ids {first_id}..{last_id} cannot be an ingest batch: ids must be between 0 and "
                         f"{MAX_ROW_ID:,} (ten digits), the first not above the last")
    return f"ids-{first_id:010d}-{last_id:010d}"


def parse_batch_key(key: str) -> tuple[int, int]:
    match = KEY_PATTERN.match(key)
    if not match:
        raise ValueError(f"not an ingest batch key: {key!r} (expected ids-<10 digits>-<10 digits>)")
    return int(match.group(1)), int(match.group(2))


@dataclass
class IngestCursor:
    """The sensor's memory between ticks: five numbers, whatever the number of batches."""

    high_water: int = 0  # the largest id that belongs to a registered batch
    rotation: int = 0  # where the next tick's check starts among the registered batches
    pending_since: float | None = None  # unix time the oldest still-pending row was first seen
    pending_upto: int = 0  # the largest id seen pending by the last tick
    last_tick: float | None = None  # unix time of the last tick (failed runs since then are checked at once)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "IngestCursor":
        if not text:
            return cls()
        data = json.loads(text)  # a cursor of an older version (with a per-batch map) is read without the map

        def number(name, cast):
            value = data.get(name)
            return None if value is None else cast(value)

        return cls(int(data.get("high_water", 0)), int(data.get("rotation", 0)), number("pending_since", float),
                   int(data.get("pending_upto", 0)), number("last_tick", float))


@dataclass
class NewBatches:
    """What one planning step cut: contiguous id ranges, and what stays pending."""

    ranges: list[tuple[int, int]]
    high_water: int
    pending_since: float | None
    pending_upto: int
    past_limit: int | None = None  # the largest id above MAX_ROW_ID, when the table has such rows (never cut)

    @property
    def keys(self) -> list[str]:
        return [batch_key(first, last) for first, last in self.ranges]

    def describe(self, now: float, max_wait_s: float, batch_rows: int) -> str:
        past = (f"; rows with ids above {MAX_ROW_ID:,} (up to {self.past_limit}) are never ingested: batch keys "
                "have ten digits" if self.past_limit is not None else "")
        if self.pending_since is None:
            return f"high-water id {self.high_water}{past}"
        waited = (now - self.pending_since) / 60
        return (f"rows up to id {self.pending_upto} pending (the oldest first seen {waited:.0f} min ago; a batch is "
                f"cut at {batch_rows} rows or after {max_wait_s / 60:.0f} min); high-water id {self.high_water}{past}")


def cut_new_batches(table: TranscriptTable, high_water: int, batch_rows: int, max_wait_s: float, now: float,
                    pending_since: float | None = None, pending_upto: int = 0) -> NewBatches:
    """Cut the pending rows above high_water into batches of batch_rows; the remainder too when its oldest row has
    waited max_wait_s (0: always). Reads only rows above the mark (index range scans), so the cost is
    O(pending rows), not O(table)."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    newest = table.max_id_after(high_water, upto=MAX_ROW_ID)  # rows past it are never cut (README, "Daily life")
    past_limit = table.max_id_after(MAX_ROW_ID)  # said in every tick's reason (describe), not dropped silently
    if newest is None:
        return NewBatches([], high_water, None, 0, past_limit)
    seen_before = pending_since is not None and pending_upto > high_water  # rows seen by an earlier tick still wait
    since = pending_since if seen_before else now
    cut_remainder = max_wait_s <= 0 or now - since >= max_wait_s
    ranges, after = [], high_water
    while after < newest:
        start = after + 1 if after > 0 else table.first_id_after(0)
        end = table.nth_id_after(after, batch_rows)
        if end is not None and end > newest:  # the batch would reach past MAX_ROW_ID: what is below is a remainder
            end = None
        if end is None:
            if not cut_remainder:
                break
            end = newest
        ranges.append((start, end))
        after = end
    if after >= newest:
        return NewBatches(ranges, after, None, 0, past_limit)
    # rows remain pending: those seen by an earlier tick keep their time (a batch may be cut a little early, never
    # late); when every earlier-seen row was cut, the rest were first seen since the last tick
    still_waiting = seen_before and pending_upto > after
    return NewBatches(ranges, after, since if still_waiting else now, newest, past_limit)


@dataclass
class BatchRequest:
    key: str
    fingerprint: str
    reason: str  # "new" | "changed" | "not materialized" | "retry" (text after it says why)
    attempt: int = 0  # runs this batch had before: a re-request after a failure gets a new run key

    @property
    def run_key(self) -> str:
        """Same batch, same content, same attempt -> same run key: a repeated tick never requests the same work
        twice, and a failed attempt can be requested again."""
        return f"{self.key}@{self.fingerprint}#{self.attempt}"


def retry_due(failures: int, last_failure_at: float | None, now: float, free_retries: int = FREE_RETRIES,
              backoff_s: float = RETRY_BACKOFF_S, max_backoff_s: float = MAX_RETRY_BACKOFF_S) -> float | None:
    """None when a failed batch may be requested again now, else the unix time it may be. The first
    `free_retries` failures are retried at once; after that the wait after each failure doubles, from backoff_s
    (1 h, 2 h, 4 h, ...) up to max_backoff_s, so a batch that fails every time costs a bounded number of runs a day
    (at most one once the waits reach a day) and a passing outage is still retried soon."""
    if failures < free_retries or last_failure_at is None:
        return None
    doublings = max(0, failures - max(free_retries, 1))  # the first wait after the free ones is backoff_s
    due = last_failure_at + min(backoff_s * 2.0 ** min(doublings, 32), max_backoff_s)
    return None if now >= due else due


def utc_text(seconds: float) -> str:
    """A unix time as people read it in a status line: 2026-11-26 21:00:00 UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def rotation_slice(keys: Sequence[str], start: int, count: int) -> tuple[list[str], int]:
    """`count` keys from position `start`, wrapping around; and where the next slice starts."""
    if not keys:
        return [], 0
    start %= len(keys)
    chosen = [keys[(start + i) % len(keys)] for i in range(min(count, len(keys)))]
    return chosen, (start + len(chosen)) % len(keys)
