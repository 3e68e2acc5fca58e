"""Ingest batches: immutable id ranges of the transcript table, and the plan of what to (re)process.

A batch key carries its id range, `ids-0000000001-0000010000`: rows first <= id <= last. Batches are cut at
registration time from the rows above the high-water mark, at most `batch_rows` rows each, so new rows always go to a
new batch and a batch's membership never grows. Each batch has a fingerprint computed by the database (row count
plus MAX(updated_at), or plus SUM(CRC32(path|transcript))); when it changes (a corrected transcript, a deleted row)
the batch is processed again. The sensor and `asr-pipeline ingest` use the same plan, and the high-water mark is
never below the end of a registered batch, so they cannot cut overlapping batches.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from asr_pipeline.core.database import TranscriptTable

KEY_PATTERN = re.compile(r"^ids-(\d{10})-(\d{10})$")


def batch_key(first_id: int, last_id: int) -> str:
    return f"ids-{first_id:010d}-{last_id:010d}"


def parse_batch_key(key: str) -> tuple[int, int]:
    match = KEY_PATTERN.match(key)
    if not match:
        raise ValueError(f"not an ingest batch key: {key!r} (expected ids-<10 digits>-<10 digits>)")
    return int(match.group(1)), int(match.group(2))


@dataclass
class IngestCursor:
    high_water: int = 0  # the largest id that belongs to a batch
    fingerprints: dict[str, str] = field(default_factory=dict)  # batch key -> fingerprint last requested
    rotation: int = 0  # where the next tick's change check starts among the registered batches

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "IngestCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(int(data.get("high_water", 0)), dict(data.get("fingerprints", {})), int(data.get("rotation", 0)))


@dataclass
class BatchRequest:
    key: str
    fingerprint: str
    reason: str  # "new" | "changed" | "not materialized"

    @property
    def run_key(self) -> str:
        """Same batch, same content -> same run key: a repeated tick never requests the same work twice."""
        return f"{self.key}@{self.fingerprint}"


@dataclass
class IngestPlan:
    new_keys: list[str]
    requests: list[BatchRequest]
    checked: int
    cursor: IngestCursor

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.requests:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "nothing to do"
        return f"{detail}; {self.checked} existing batches checked for changes; high-water id {self.cursor.high_water}"


def plan_ingest(
    table: TranscriptTable,
    cursor: IngestCursor,
    registered_keys: Iterable[str],
    batch_rows: int = 10_000,
    check_batches: int = 20,
    materialized_fingerprint: Callable[[str], str | None] = lambda key: None,
) -> IngestPlan:
    """What a tick must do. Reads only rows above the high-water mark (index range scans) plus the fingerprints of
    at most `check_batches` registered batches, in rotation, so its cost does not grow with the table."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    registered = sorted(registered_keys)
    high_water = max([cursor.high_water, *(parse_batch_key(k)[1] for k in registered)])
    fingerprints = dict(cursor.fingerprints)
    requests, new_keys = [], []

    after = high_water
    while (first := table.first_id_after(after)) is not None:
        last = table.batch_end_after(after, batch_rows)
        key = batch_key(first, last)
        fingerprints[key] = table.batch_fingerprint(first, last)
        new_keys.append(key)
        requests.append(BatchRequest(key, fingerprints[key], "new"))
        after = last

    checked = 0
    if registered:
        start = cursor.rotation % len(registered)
        for i in range(min(check_batches, len(registered))):
            key = registered[(start + i) % len(registered)]
            current = table.batch_fingerprint(*parse_batch_key(key))
            known = fingerprints.get(key) or materialized_fingerprint(key)
            checked += 1
            if known is None:
                requests.append(BatchRequest(key, current, "not materialized"))
            elif current != known:
                requests.append(BatchRequest(key, current, "changed"))
            fingerprints[key] = current
        rotation = (start + checked) % len(registered)
    else:
        rotation = 0
    fingerprints = {k: v for k, v in fingerprints.items() if k in set(registered) | set(new_keys)}
    return IngestPlan(new_keys, requests, checked, IngestCursor(after, fingerprints, rotation))
