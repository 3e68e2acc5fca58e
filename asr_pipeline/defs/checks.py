"""Blocking asset checks: a failed one stops the run before a bad result reaches the next asset."""

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from asr_pipeline.core.audio import SAMPLE_RATE
from asr_pipeline.core.features import FRAMES_30S, MAX_LABEL_TOKENS
from asr_pipeline.defs.assets import featurized_shards, finetuned_checkpoint, resampled_dataset
from asr_pipeline.defs.resources import PipelineSettings


@dg.asset_check(asset=resampled_dataset, blocking=True,
                description="The share of rows quarantined stays under ASR_MAX_QUARANTINE_RATE.")
def quarantine_rate_below_threshold(resampled_dataset: Path, settings: PipelineSettings) -> dg.AssetCheckResult:
    kept = len(pd.read_parquet(resampled_dataset / "index.parquet", columns=["id"]))
    quarantine = pd.read_parquet(resampled_dataset / "quarantine.parquet")
    total = kept + len(quarantine)
    rate = len(quarantine) / total if total else 1.0
    reasons = quarantine["reason"].str.split(" (", regex=False).str[0].value_counts().to_dict()
    return dg.AssetCheckResult(
        passed=bool(total) and rate <= settings.max_quarantine_rate,
        metadata={"quarantine_rate": rate, "threshold": settings.max_quarantine_rate, "quarantined": len(quarantine),
                  "rows": total, "reasons": dg.MetadataValue.json(reasons)},
        description=None if total else "no rows at all",
    )


@dg.asset_check(asset=resampled_dataset, blocking=True,
                description="Every kept clip is 16 kHz mono float32 and the sample file holds exactly the index's clips.")
def clips_are_16k_mono(resampled_dataset: Path) -> dg.AssetCheckResult:
    meta = json.loads((resampled_dataset / "meta.json").read_text())
    index = pd.read_parquet(resampled_dataset / "index.parquet")
    stored = (resampled_dataset / "audio.f32").stat().st_size // 4
    durations_agree = np.allclose(index["num_samples"] / SAMPLE_RATE, index["duration"], atol=1e-6)
    sizes = index["num_samples"].to_numpy()
    contiguous = (index["offset"].to_numpy() == np.concatenate([[0], np.cumsum(sizes)[:-1]])).all() if len(index) else True
    passed = meta["sample_rate"] == SAMPLE_RATE and stored == int(index["num_samples"].sum()) and durations_agree \
        and bool(contiguous)
    return dg.AssetCheckResult(passed=bool(passed), metadata={"sample_rate": meta["sample_rate"],
                                                              "samples_stored": int(stored),
                                                              "samples_indexed": int(index["num_samples"].sum())})


@dg.asset_check(asset=featurized_shards, blocking=True,
                description="Feature shapes match the base model (mel bins, at most 3000 frames, labels <= 448).")
def features_match_model(featurized_shards: Path) -> dg.AssetCheckResult:
    from transformers import WhisperConfig

    meta = json.loads((featurized_shards / "meta.json").read_text())
    index = pd.read_parquet(featurized_shards / "index.parquet", columns=["num_frames", "label_length"])
    model_mels = WhisperConfig.from_pretrained(meta["model"]).num_mel_bins
    stored = (featurized_shards / "features.f16").stat().st_size
    problems = []
    if meta["num_mel_bins"] != model_mels:
        problems.append(f"{meta['num_mel_bins']} mel bins stored, model expects {model_mels}")
    if stored != int(index["num_frames"].sum()) * meta["num_mel_bins"] * 2:
        problems.append("features.f16 size does not match the index")
    if len(index) and (index["num_frames"].max() > FRAMES_30S or index["num_frames"].min() < 1):
        problems.append("a clip has no frames or more than 3000")
    if len(index) and index["label_length"].max() > MAX_LABEL_TOKENS:
        problems.append("a label is longer than 448 tokens")
    return dg.AssetCheckResult(passed=not problems, description="; ".join(problems) or None,
                               metadata={"num_mel_bins": meta["num_mel_bins"], "model_num_mel_bins": model_mels})


@dg.asset_check(asset=finetuned_checkpoint, blocking=True,
                description="Every logged training loss is finite (a NaN/inf run must not be evaluated or deployed).")
def training_loss_finite(finetuned_checkpoint: Path) -> dg.AssetCheckResult:
    history = json.loads((finetuned_checkpoint / "training_log.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h] + [h["train_loss"] for h in history if "train_loss" in h]
    bad = [x for x in losses if not math.isfinite(x)]
    return dg.AssetCheckResult(passed=bool(losses) and not bad,
                               metadata={"logged_losses": len(losses), "non_finite": len(bad),
                                         "last_loss": losses[-1] if losses and not bad else -1.0})


CHECKS = [quarantine_rate_below_threshold, clips_are_16k_mono, features_match_model, training_loss_finite]
