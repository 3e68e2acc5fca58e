"""Settings that change a batch's content are part of the ingest assets' code versions.

build_definitions sets each ingest asset's code_version from the settings read at load time
(asr_pipeline.core.versions), so after a change of ASR_SPLIT_RATIOS, ASR_GROUP_PATTERN, ASR_PATH_MAP, the duration
limits, ASR_BASE_MODEL (its processor) or the label clean-up, Dagster marks the batches made before it "stale"
("has a new code version") in the UI, and `asr-pipeline backfill --stale` re-processes exactly those.
Every materialization also records the settings behind its version (metadata `version_inputs`), so a stale batch's
reason names the variable that changed.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import dagster as dg

from asr_pipeline.core.versions import FIX_COMMAND, INGEST_ASSETS, ContentVersion, changed_settings, ingest_versions
from asr_pipeline.defs.common.resources import PipelineSettings

CODE_VERSION_TAG = "dagster/code_version"
# featurized_shards' version covers the other two, so its latest materialization decides whether a batch is stale
DECIDING_ASSET = "featurized_shards"
FETCH_CHUNK = 500


def current_versions(settings: PipelineSettings) -> dict[str, ContentVersion]:
    return ingest_versions(settings.parsed_path_map(), settings.parsed_split_ratios(), settings.group_pattern,
                           settings.min_audio_seconds, settings.max_audio_seconds, settings.base_model)


def with_code_versions(assets: Sequence, settings: PipelineSettings) -> list:
    """The assets with the ingest assets' code_version set from the settings (other assets unchanged)."""
    versions = current_versions(settings)

    def set_version(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        return spec.replace_attributes(code_version=versions[name].version) if name in versions else spec

    return [asset.map_asset_specs(set_version)
            if isinstance(asset, dg.AssetsDefinition) and any(k.to_user_string() in INGEST_ASSETS for k in asset.keys)
            else asset for asset in assets]


def version_metadata(settings: PipelineSettings, asset: str) -> dict:
    """Recorded on every ingest materialization: the version and the settings it hashes."""
    version = current_versions(settings)[asset]
    return {"content_version": version.version, "version_inputs": dg.MetadataValue.json(dict(version.inputs))}


def _latest_records(instance: dg.DagsterInstance, asset: str, keys: Iterable[str]) -> dict[str, dg.EventLogRecord]:
    """The latest materialization of each given partition: one storage-id lookup, then the records in chunks."""
    asset_key = dg.AssetKey(asset)
    latest = instance.get_latest_storage_id_by_partition(asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                         partitions=set(keys))
    ids = sorted(latest.values())
    records = {}
    for start in range(0, len(ids), FETCH_CHUNK):
        chunk = ids[start: start + FETCH_CHUNK]
        for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=chunk), limit=len(chunk)).records:
            records[record.partition_key] = record
    return records


def stale_batch_reasons(instance: dg.DagsterInstance, settings: PipelineSettings,
                        keys: Iterable[str]) -> dict[str, str]:
    """{batch key: why it is stale} for the batches whose features were made with other settings than the current
    ones. Batches without features are not listed (they are pending or failed, not stale)."""
    current = current_versions(settings)[DECIDING_ASSET]
    reasons = {}
    for key, record in _latest_records(instance, DECIDING_ASSET, keys).items():
        materialization = record.asset_materialization
        if materialization is None or materialization.tags.get(CODE_VERSION_TAG) == current.version:
            continue
        entry = materialization.metadata.get("version_inputs")
        old_inputs = entry.value if entry is not None else None
        changes = changed_settings(old_inputs, current.inputs)
        reasons[key] = f"{DECIDING_ASSET} was made with other settings ({changes}); `{FIX_COMMAND}` re-processes it"
    return reasons
