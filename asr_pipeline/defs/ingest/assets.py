"""The ingest assets, partitioned by ingest batch (an id range of the table, asr_pipeline.core.batches): transcript rows
-> raw_manifest -> resampled_dataset (16 kHz audio) -> featurized_shards (log-mels and label ids). Each asset body is
wiring; the work is in asr_pipeline.core."""

from pathlib import Path

import dagster as dg

from asr_pipeline.core import audio, audio_shard, features, manifest, tables
from asr_pipeline.core.batches import parse_batch_key
from asr_pipeline.core.model import load_featurizer
from asr_pipeline.core.storage import write_json
from asr_pipeline.defs.common import versions
from asr_pipeline.defs.common.io_managers import stage
from asr_pipeline.defs.common.resources import PipelineSettings, TranscriptDatabase
from asr_pipeline.defs.common.shards import GROUP, storage_dir
from asr_pipeline.defs.ingest import checks
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES

training_datas = dg.AssetSpec(
    "training_datas",
    description="The transcript table (id, raw_data = audio path on the NAS, transcript), owned outside Dagster.",
    group_name="source",
    kinds={"sql"},
)


def _preview(rows: list[dict], columns: list[str], limit: int = 10) -> dg.MetadataValue:
    return dg.MetadataValue.md(tables.markdown(rows, columns, limit))


@dg.asset(
    group_name=GROUP, deps=[training_datas], partitions_def=INGEST_BATCHES, kinds={"parquet"},
    description="One ingest batch of the transcript table (rows first..last of its key) with NAS paths rewritten "
    "(ASR_PATH_MAP) and a stable split (a hash of the episode id: one broadcast never straddles train and test).",
)
def raw_manifest(context: dg.AssetExecutionContext, database: TranscriptDatabase,
                 settings: PipelineSettings) -> dg.Output:
    first, last = parse_batch_key(context.partition_key)
    table = database.reader()
    # fingerprint first: a change that lands while we read makes the sensor re-request, never go unnoticed
    fingerprint = table.batch_fingerprint(first, last)
    context.log.info(f"reading ids {first}..{last} of {database.describe()}")
    rows = list(table.read_range(first, last))
    records = manifest.manifest_rows(rows, settings.parsed_path_map(), settings.parsed_split_ratios(),
                                     settings.group_pattern)
    out = stage(context, storage_dir(settings))
    tables.write_rows(out / "manifest.parquet", records, manifest.MANIFEST_COLUMNS)
    splits = tables.counts(r["split"] for r in records)
    groups = len({r["group"] for r in records})
    context.log.info(f"{len(records)} rows, splits {splits}, {groups} groups")
    fallback = manifest.fallback_group_share(records)
    if fallback > manifest.FALLBACK_WARNING_SHARE:
        context.log.warning(f"{fallback:.0%} of the rows' file names do not match ASR_GROUP_PATTERN and are grouped "
                            "by row id: their episodes can straddle train and test. Fix ASR_GROUP_PATTERN.")
    return dg.Output(out, metadata={
        "rows": len(records), "groups": groups, "fingerprint": fingerprint,
        "fallback_group_share": round(fallback, 4), **versions.version_metadata(settings, "raw_manifest"),
        "first_id": first, "last_id": last,
        **{f"{name}_rows": int(splits.get(name, 0)) for name in manifest.SPLITS},
        "source": database.describe(), "preview": _preview(records, ["id", "audio_path", "transcript", "split"]),
    })


@dg.asset(group_name=GROUP, partitions_def=INGEST_BATCHES, kinds={"numpy"}, check_specs=checks.RESAMPLED_CHECKS,
          description="Every clip decoded (wav/flac/mp3/ogg; m4a, mp4, ts and more through FFmpeg), downmixed to "
          "mono and resampled to 16 kHz (soxr); unusable rows are quarantined with a reason.")
def resampled_dataset(context: dg.AssetExecutionContext, raw_manifest: Path, settings: PipelineSettings):
    records = tables.read_rows(raw_manifest / "manifest.parquet")
    out = stage(context, storage_dir(settings))
    limits = audio.AudioLimits(settings.min_audio_seconds, settings.max_audio_seconds)
    summary = audio.resample_manifest(records, out, limits, emit=context.log.info,
                                      roots=settings.parsed_audio_roots())
    quarantine = tables.read_rows(out / "quarantine.parquet")
    if quarantine:
        context.log.warning(f"{len(quarantine)} rows quarantined: {checks.quarantine_reasons(quarantine)}")
    suspects = [checks.near_silent_clips(out, settings.max_suspect_audio_rate, context.partition_key),
                checks.cancelling_downmix(out, settings.max_suspect_audio_rate, context.partition_key)]
    for suspect in suspects:
        if not suspect.passed:
            context.log.warning(suspect.description)
    results = [checks.quarantine_rate(out, settings.max_quarantine_rate), checks.clips_are_16k_mono(out), *suspects]
    # the summary (near_silent_clips, cancelling_downmix_clips) keeps the counts per batch: a check shows only its
    # latest evaluation, maybe another batch's
    yield dg.Output(out, metadata={**summary, **versions.version_metadata(settings, "resampled_dataset"),
                                   "quarantine": _preview(quarantine, ["id", "audio_path", "reason"], limit=20)})
    yield from results


@dg.asset(group_name=GROUP, partitions_def=INGEST_BATCHES, kinds={"numpy"}, check_specs=checks.FEATURE_CHECKS,
          description="Log-mel features (mel bins from the base model's config) stored compactly as float16 frames "
          "that hold audio, plus label ids from the tokenizer with the Korean/transcribe prefix.")
def featurized_shards(context: dg.AssetExecutionContext, resampled_dataset: Path, settings: PipelineSettings):
    clips = audio_shard.AudioShard(resampled_dataset)
    base = settings.resolve_base(corpus=clips.column("transcript").tolist())
    if base.warning:
        context.log.warning(base.warning)
    feature_extractor, tokenizer = load_featurizer(base.source)  # numpy + tokenizers: no torch in an ingest
    context.log.info(f"featurizing {len(clips)} clips for {base.source} (log-mel: {type(feature_extractor).__name__}, "
                     f"labels: {type(tokenizer).__name__})")
    out = stage(context, storage_dir(settings))
    summary = features.featurize_shard(clips, out, feature_extractor, tokenizer, base.source, emit=context.log.info)
    summary["placeholder_model"] = base.placeholder
    version = versions.current_versions(settings)["featurized_shards"]
    # in the shard itself, so training can tell batches made with other settings apart (mixed_versions_message)
    summary.update(content_version=version.version, version_inputs=dict(version.inputs))
    write_json(out / "meta.json", summary)
    result = checks.features_match_model(out)
    yield dg.Output(out, metadata={**{k: v for k, v in summary.items() if k not in ("splits", "version_inputs")},
                                   **{f"{k}_rows": int(v) for k, v in summary["splits"].items()},
                                   **versions.version_metadata(settings, "featurized_shards")})
    yield result
