"""The ingest assets' blocking checks, evaluated by the assets themselves (check_specs) on the data they are about to
publish, so they work per ingest batch: a failed one stops the run before the bad batch reaches the next asset."""

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

RESAMPLED_CHECKS = [
    dg.AssetCheckSpec(QUARANTINE_RATE, asset="resampled_dataset", blocking=True,
                      description="The share of rows quarantined stays under ASR_MAX_QUARANTINE_RATE."),
    dg.AssetCheckSpec(CLIPS_16K, asset="resampled_dataset", blocking=True,
                      description="Every kept clip is 16 kHz mono; the audio file holds the index's clips, in order."),
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
