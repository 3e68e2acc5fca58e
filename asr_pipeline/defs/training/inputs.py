"""What a training may use, decided when it starts: rows deleted from the table are left out, and the batches it
cannot use (not featurized, failed, blocked) or uses in an older version are named in the checkpoint's metadata.

A deleted row (a rights takedown) must never reach a checkpoint trained after the deletion was seen, even when its
batch's re-ingest is blocked or failing and the old features are all there is. So at training start the live ids of
every featurized batch's id range are read from the table (one index range scan of the id column per batch) and
every feature row whose id is gone is excluded (training_data.FeatureRows exclude_ids). Without the database the
training fails rather than risk it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from asr_pipeline.core.batches import parse_batch_key
from asr_pipeline.core.tables import read_table
from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.defs.ingest.batch_states import batch_states


@dataclass
class TrainingInputs:
    exclude_ids: frozenset[int] = frozenset()
    deleted_by_batch: dict[str, int] = field(default_factory=dict)  # batch -> rows deleted from the table since
    not_used: dict[str, str] = field(default_factory=dict)  # registered batches without features: "state: reason"
    outdated: dict[str, str] = field(default_factory=dict)  # used, but not for their current content

    def metadata(self) -> dict:
        return {"deleted_rows_excluded": len(self.exclude_ids),
                "deleted_rows_by_batch": dg.MetadataValue.json(self.deleted_by_batch),
                "batches_not_used": dg.MetadataValue.json(self.not_used),
                "batches_outdated": dg.MetadataValue.json(self.outdated)}

    def summary(self) -> dict:
        return {"deleted_rows_excluded": len(self.exclude_ids), "deleted_rows_by_batch": self.deleted_by_batch,
                "batches_not_used": self.not_used, "batches_outdated": self.outdated}


def deleted_rows(table: TranscriptTable, shard_dirs: dict[str, Path]) -> tuple[frozenset[int], dict[str, int]]:
    """Ids present in a batch's features but no longer in the table."""
    gone: set[int] = set()
    by_batch: dict[str, int] = {}
    for key, path in sorted(shard_dirs.items()):
        stored = set(read_table(path / "index.parquet", ["id"]).column("id").to_pylist())
        missing = stored - table.live_ids(*parse_batch_key(key))
        if missing:
            by_batch[key] = len(missing)
            gone |= missing
    return frozenset(gone), by_batch


def survey(context: dg.AssetExecutionContext, table: TranscriptTable, shard_dirs: dict[str, Path]) -> TrainingInputs:
    exclude, by_batch = deleted_rows(table, shard_dirs)
    inputs = TrainingInputs(exclude, by_batch)
    for state in batch_states(context.instance, table=table):
        if state.key not in shard_dirs:
            inputs.not_used[state.key] = f"{state.state}: {state.reason}"
        elif state.state != "done":
            inputs.outdated[state.key] = f"{state.state}: {state.reason}"
    if exclude:
        context.log.warning(f"{len(exclude)} rows deleted from the table since they were featurized are left out "
                            f"(by batch: {by_batch})")
    if inputs.not_used:
        context.log.warning(f"{len(inputs.not_used)} registered batches have no features and are not used: "
                            f"{dict(list(inputs.not_used.items())[:5])}")
    if inputs.outdated:
        context.log.warning(f"{len(inputs.outdated)} batches are used in an older version (their current content "
                            f"is not featurized yet): {dict(list(inputs.outdated.items())[:5])}")
    return inputs
