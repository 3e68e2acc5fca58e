"""The ingest plan against a Dagster instance: shared by new_transcripts_sensor and `asr-pipeline ingest`."""

import dagster as dg

from asr_pipeline.core.batches import IngestCursor, IngestPlan, plan_ingest
from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.defs.partitions import INGEST_BATCHES
from asr_pipeline.defs.resources import PipelineSettings

INGEST_TAGS = {"asr/stage": "ingest"}


def _latest(instance: dg.DagsterInstance, asset: str, key: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1).records
    return records[0] if records else None


def materialized_fingerprint(instance: dg.DagsterInstance, key: str) -> str | None:
    """The fingerprint of the content this batch was last fully processed from; None when the chain never reached
    featurized_shards after the latest raw_manifest (a run failed or was killed part way), so it is done again."""
    manifest = _latest(instance, "raw_manifest", key)
    shards = _latest(instance, "featurized_shards", key)
    if manifest is None or shards is None or shards.storage_id < manifest.storage_id:
        return None
    entry = manifest.asset_materialization.metadata.get("fingerprint")
    return str(entry.value) if entry is not None else None


def plan_for_instance(instance: dg.DagsterInstance, table: TranscriptTable, cursor: IngestCursor,
                      settings: PipelineSettings) -> IngestPlan:
    return plan_ingest(
        table, cursor, instance.get_dynamic_partitions(INGEST_BATCHES.name), batch_rows=settings.batch_rows,
        check_batches=settings.check_batches_per_tick,
        materialized_fingerprint=lambda key: materialized_fingerprint(instance, key))


def run_requests(plan: IngestPlan) -> list[dg.RunRequest]:
    return [dg.RunRequest(run_key=r.run_key, partition_key=r.key,
                          tags={**INGEST_TAGS, "asr/reason": r.reason, "asr/fingerprint": r.fingerprint})
            for r in plan.requests]
