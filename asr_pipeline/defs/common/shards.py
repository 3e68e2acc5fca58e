"""What the areas share about assets: where they are stored and their group (every area), the training pool, and the
featurized batches training and evaluation both read (every batch made with the same base model and settings)."""

from pathlib import Path

import dagster as dg

from asr_pipeline.core import features
from asr_pipeline.core.versions import mixed_versions_message
from asr_pipeline.defs.common import versions
from asr_pipeline.defs.common.resources import PipelineSettings

GROUP = "asr"
TRAINING_POOL = "asr_training"  # dagster.yaml limits it to 1: one training (or evaluation) at a time


def storage_dir(settings: PipelineSettings) -> Path:
    return Path(settings.home) / "storage"


def load_shards(context: dg.AssetExecutionContext, shard_dirs: dict[str, Path]) -> list[features.FeatureShard]:
    if not shard_dirs:
        raise ValueError("no featurized_shards partition is materialized yet: run the ingest first "
                         "(`asr-pipeline ingest`, or turn on new_transcripts_sensor)")
    shards = [features.FeatureShard(shard_dirs[key]) for key in sorted(shard_dirs)]
    models = {shard.meta["model"] for shard in shards}
    if len(models) > 1:
        raise ValueError(f"featurized batches were made with different base models {sorted(models)}: backfill "
                         "featurized_shards so every batch uses the current ASR_BASE_MODEL (`asr-pipeline backfill "
                         "--stale`)")
    current = versions.current_versions(context.resources.settings)["featurized_shards"]
    mix = mixed_versions_message({key: shard.meta for key, shard in zip(sorted(shard_dirs), shards)}, current)
    if mix:
        raise ValueError(mix)
    if shards[0].meta.get("content_version") != current.version:
        context.log.warning("every featurized batch was made with other settings than the current ones; "
                            "`asr-pipeline backfill --stale` re-processes them")
    context.log.info(f"using {len(shards)} featurized batches, {sum(len(s) for s in shards)} rows")
    return shards


def partitions_metadata(shard_dirs: dict[str, Path], shards: list[features.FeatureShard]) -> dict:
    return {"partitions_used": len(shards), "rows_available": sum(len(s) for s in shards),
            "partitions": dg.MetadataValue.json({key: len(s) for key, s in zip(sorted(shard_dirs), shards)})}
