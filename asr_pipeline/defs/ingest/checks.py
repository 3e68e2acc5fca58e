"""The ingest assets' checks, evaluated by the assets themselves (check_specs) on the data they are about to publish,
so they work per ingest batch: a failed blocking one stops the run before the bad batch reaches the next asset; a
warning (no_near_silent_clips) lets the batch through and names the rows."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from asr_pipeline.core.audio_shard import SAMPLE_RATE, AudioShard
from asr_pipeline.core.features import FRAMES_30S, MAX_LABEL_TOKENS

QUARANTINE_RATE = "quarantine_rate_below_threshold"
CLIPS_16K = "clips_are_16k_mono"
FEATURE_SHAPES = "features_match_model"
NEAR_SILENT = "no_near_silent_clips"
# A kept clip whose loudest sample is below this is a silent or all-but-silent track: broadcast speech peaks tens of
# dB higher (a whispered scene still near -35 dBFS). Trained with its transcript, such a clip teaches the model to
# write text where it hears nothing, the hallucination the report's guards look for.
NEAR_SILENT_PEAK_DBFS = -50.0
NEAR_SILENT_IDS_SHOWN = 20

RESAMPLED_CHECKS = [
    dg.AssetCheckSpec(QUARANTINE_RATE, asset="resampled_dataset", blocking=True,
                      description="The share of rows quarantined stays under ASR_MAX_QUARANTINE_RATE."),
    dg.AssetCheckSpec(CLIPS_16K, asset="resampled_dataset", blocking=True,
                      description="Every kept clip is 16 kHz mono; the audio file holds the index's clips, in order."),
    dg.AssetCheckSpec(NEAR_SILENT, asset="resampled_dataset", blocking=False,
                      description=f"No kept clip peaks below {NEAR_SILENT_PEAK_DBFS:g} dBFS (a silent track with a "
                                  "transcript teaches the model to invent text). A warning: the rows stay in the "
                                  "batch; the check names them."),
]
FEATURE_CHECKS = [
    dg.AssetCheckSpec(FEATURE_SHAPES, asset="featurized_shards", blocking=True,
                      description="Mel bins match the base model, 1..3000 frames a clip, labels <= 448 tokens."),
]


def quarantine_rate(shard_dir: Path, threshold: float) -> dg.AssetCheckResult:
    kept = len(pd.read_parquet(shard_dir / "index.parquet", columns=["id"]))
    quarantine = pd.read_parquet(shard_dir / "quarantine.parquet")
    total = kept + len(quarantine)
    rate = len(quarantine) / total if total else 0.0
    reasons = quarantine["reason"].str.split(" (", regex=False).str[0].value_counts().to_dict()
    return dg.AssetCheckResult(
        check_name=QUARANTINE_RATE, asset_key="resampled_dataset", passed=rate <= threshold,
        description=f"{len(quarantine)} of {total} rows quarantined ({rate:.0%}, limit ASR_MAX_QUARANTINE_RATE "
                    f"{threshold:.0%}): {reasons}",
        metadata={"quarantine_rate": rate, "threshold": threshold, "quarantined": len(quarantine), "rows": total,
                  "reasons": dg.MetadataValue.json(reasons)})


def clips_are_16k_mono(shard_dir: Path) -> dg.AssetCheckResult:
    meta = json.loads((shard_dir / "meta.json").read_text())
    shard = AudioShard(shard_dir)
    sizes = shard.index["num_samples"].to_numpy()
    stored = shard.stored_lengths()
    same_clips = len(stored) == len(sizes) and bool((stored == sizes).all()) \
        and bool((shard.stored_ids == shard.index["id"].to_numpy()).all())
    durations_agree = bool(np.allclose(sizes / SAMPLE_RATE, shard.index["duration"], atol=1e-6)) \
        if len(sizes) else True
    passed = meta["sample_rate"] == SAMPLE_RATE and same_clips and durations_agree
    return dg.AssetCheckResult(check_name=CLIPS_16K, asset_key="resampled_dataset", passed=bool(passed),
                               metadata={"sample_rate": meta["sample_rate"], "samples_stored": int(stored.sum()),
                                         "samples_indexed": int(sizes.sum())})


def near_silent_clips(shard_dir: Path, batch: str | None = None) -> dg.AssetCheckResult:
    """Warns about kept clips whose peak |sample| (the index's `peak`, after the mix to mono) is below
    NEAR_SILENT_PEAK_DBFS, with their ids, quietest first."""
    index = pd.read_parquet(shard_dir / "index.parquet", columns=["id", "peak"])
    quiet = index[index["peak"] < 10 ** (NEAR_SILENT_PEAK_DBFS / 20)].sort_values(["peak", "id"])
    shown = [int(i) for i in quiet["id"].head(NEAR_SILENT_IDS_SHOWN)]
    metadata = {"near_silent_clips": len(quiet), "peak_limit_dbfs": NEAR_SILENT_PEAK_DBFS,
                "ids": dg.MetadataValue.json(shown)}
    description = None
    if len(quiet):
        metadata["quietest_peak"] = _dbfs(float(quiet["peak"].iloc[0]))
        more = f" and {len(quiet) - len(shown)} more" if len(quiet) > len(shown) else ""
        description = (f"{len(quiet)} of {len(index)} kept clips peak below {NEAR_SILENT_PEAK_DBFS:g} dBFS (silent "
                       f"or all but silent) yet have transcripts: ids {', '.join(map(str, shown))}{more}. Check their "
                       "audio (a muted or wrong track?). A row deleted from the table is left out of the next "
                       "training; after fixing a file, `asr-pipeline backfill "
                       f"{batch or 'BATCH'}` ingests the batch again.")
    return dg.AssetCheckResult(check_name=NEAR_SILENT, asset_key="resampled_dataset", passed=quiet.empty,
                               severity=dg.AssetCheckSeverity.WARN, description=description, metadata=metadata)


def _dbfs(peak: float) -> str:
    return f"{20 * np.log10(peak):.1f} dBFS" if peak > 0 else "digital silence (every sample 0)"


def features_match_model(shard_dir: Path) -> dg.AssetCheckResult:
    from asr_pipeline.core.model import model_num_mel_bins  # the config.json alone: no transformers import

    meta = json.loads((shard_dir / "meta.json").read_text())
    index = pd.read_parquet(shard_dir / "index.parquet", columns=["num_frames", "label_length"])
    model_mels = model_num_mel_bins(meta["model"])
    stored = (shard_dir / "features.f16").stat().st_size
    problems = []
    if meta["num_mel_bins"] != model_mels:
        problems.append(f"{meta['num_mel_bins']} mel bins stored, model expects {model_mels}")
    if stored != int(index["num_frames"].sum()) * meta["num_mel_bins"] * 2:
        problems.append("features.f16 size does not match the index")
    if len(index) and (index["num_frames"].max() > FRAMES_30S or index["num_frames"].min() < 1):
        problems.append("a clip has no frames or more than 3000")
    if len(index) and index["label_length"].max() > MAX_LABEL_TOKENS:
        problems.append("a label is longer than 448 tokens")
    return dg.AssetCheckResult(check_name=FEATURE_SHAPES, asset_key="featurized_shards", passed=not problems,
                               description="; ".join(problems) or None,
                               metadata={"num_mel_bins": meta["num_mel_bins"], "model_num_mel_bins": model_mels})
