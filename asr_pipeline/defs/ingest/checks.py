"""The ingest assets' checks, evaluated by the assets themselves (check_specs) on the data they are about to publish,
so they work per ingest batch: a blocking one that fails with severity ERROR stops the run before the bad batch
reaches the next asset. Two of them usually only warn (severity WARN: the batch goes on) and name the rows:
no_near_silent_clips and no_cancelling_downmix block only when their clips are more than ASR_MAX_SUSPECT_AUDIO_RATE
of the batch's kept clips, and at least BLOCK_MIN_CLIPS (or most of a small batch)."""

import json
from pathlib import Path

import dagster as dg
import numpy as np

from asr_pipeline.core import audio_quality, tables
from asr_pipeline.core.audio_shard import SAMPLE_RATE, AudioShard
from asr_pipeline.core.features import FRAMES_30S, MAX_LABEL_TOKENS

QUARANTINE_RATE = "quarantine_rate_below_threshold"
CLIPS_16K = "clips_are_16k_mono"
FEATURE_SHAPES = "features_match_model"
NEAR_SILENT = "no_near_silent_clips"
CANCELLING_DOWNMIX = "no_cancelling_downmix"
IDS_SHOWN = 20  # ids a check's description and metadata name (every row's levels are in index.parquet)
# a batch is blocked by suspect audio only with at least this many such clips: one quiet clip in a batch of three
# (a small batch cut by ASR_BATCH_MAX_WAIT_MINUTES) is named, not a reason to stop the batch and alert every night
BLOCK_MIN_CLIPS = 10

RESAMPLED_CHECKS = [
    dg.AssetCheckSpec(QUARANTINE_RATE, asset="resampled_dataset", blocking=True,
                      description="The share of rows quarantined stays under ASR_MAX_QUARANTINE_RATE."),
    dg.AssetCheckSpec(CLIPS_16K, asset="resampled_dataset", blocking=True,
                      description="Every kept clip is 16 kHz mono; the audio file holds the index's clips, in order."),
    dg.AssetCheckSpec(NEAR_SILENT, asset="resampled_dataset", blocking=True,
                      description="Kept clips whose peak, less any DC offset, is below "
                                  f"{audio_quality.NEAR_SILENT_PEAK_DBFS:g} dBFS, or reaches it for under "
                                  f"{audio_quality.NEAR_SILENT_SOUND_SECONDS:g} s in all (silent, or a click in "
                                  "silence, yet with a transcript) are named as a warning; more than "
                                  "ASR_MAX_SUSPECT_AUDIO_RATE of the batch's kept clips (and "
                                  f"at least {BLOCK_MIN_CLIPS}, or most of a small batch) block it."),
    dg.AssetCheckSpec(CANCELLING_DOWNMIX, asset="resampled_dataset", blocking=True,
                      description="Kept clips whose channels cancel when averaged to mono (the mix or a pair keeping "
                                  f"under {audio_quality.CANCELLING_RETENTION:.0%} of their energy: a channel with inverted "
                                  "polarity takes out the dialogue) are named as a warning; more than "
                                  "ASR_MAX_SUSPECT_AUDIO_RATE of the batch's kept clips (and at least "
                                  f"{BLOCK_MIN_CLIPS}, or most of a small batch) block it."),
]
FEATURE_CHECKS = [
    dg.AssetCheckSpec(FEATURE_SHAPES, asset="featurized_shards", blocking=True,
                      description="Mel bins match the base model, 1..3000 frames a clip, labels <= 448 tokens."),
]


def quarantine_rate(shard_dir: Path, threshold: float) -> dg.AssetCheckResult:
    kept = tables.read_table(shard_dir / "index.parquet", ["id"]).num_rows
    quarantine = tables.read_rows(shard_dir / "quarantine.parquet")
    total = kept + len(quarantine)
    rate = len(quarantine) / total if total else 0.0
    reasons = quarantine_reasons(quarantine)
    return dg.AssetCheckResult(
        check_name=QUARANTINE_RATE, asset_key="resampled_dataset", passed=rate <= threshold,
        description=f"{len(quarantine)} of {total} rows quarantined ({rate:.0%}, limit ASR_MAX_QUARANTINE_RATE "
                    f"{threshold:.0%}): {reasons}",
        metadata={"quarantine_rate": rate, "threshold": threshold, "quarantined": len(quarantine), "rows": total,
                  "reasons": dg.MetadataValue.json(reasons)})


def quarantine_reasons(quarantine: list[dict]) -> dict[str, int]:
    """Quarantine reasons without their details ("missing file (/nas/...)" counts as "missing file")."""
    return tables.counts(row["reason"].split(" (", 1)[0] for row in quarantine)


def clips_are_16k_mono(shard_dir: Path) -> dg.AssetCheckResult:
    meta = json.loads((shard_dir / "meta.json").read_text())
    shard = AudioShard(shard_dir)
    sizes = shard.column("num_samples")
    stored = shard.stored_lengths()
    same_clips = len(stored) == len(sizes) and bool((stored == sizes).all()) \
        and bool((shard.stored_ids == shard.column("id")).all())
    durations_agree = bool(np.allclose(sizes / SAMPLE_RATE, shard.column("duration"), atol=1e-6)) \
        if len(sizes) else True
    passed = meta["sample_rate"] == SAMPLE_RATE and same_clips and durations_agree
    return dg.AssetCheckResult(check_name=CLIPS_16K, asset_key="resampled_dataset", passed=bool(passed),
                               metadata={"sample_rate": meta["sample_rate"], "samples_stored": int(stored.sum()),
                                         "samples_indexed": int(sizes.sum())})


def near_silent_clips(shard_dir: Path, max_rate: float, batch: str | None = None) -> dg.AssetCheckResult:
    """Kept clips whose largest excursion from their mean, after the mix to mono, is below NEAR_SILENT_PEAK_DBFS,
    or reaches it for less than NEAR_SILENT_SOUND_SECONDS (audio_quality.near_silent)."""
    index = audio_quality.read_index(shard_dir, audio_quality.NEAR_SILENT_COLUMNS)
    quiet = tables.numpy_columns(audio_quality.near_silent(index))
    level = "ac_peak" if "ac_peak" in quiet else "peak"
    limit = audio_quality.NEAR_SILENT_PEAK_DBFS
    found = ""
    if len(quiet["id"]) and "sound_seconds" in quiet:
        loud = audio_quality.NEAR_SILENT_PEAK
        first_level = float(quiet[level][0])
        quietest = _dbfs(first_level) + (f" for {float(quiet['sound_seconds'][0]):g} s"
                                         if first_level >= loud else "")
        found = (f"have no sound to speak of, yet have transcripts: a peak below {limit:g} dBFS, less any DC offset, "
                 f"or one reached for under {audio_quality.NEAR_SILENT_SOUND_SECONDS:g} s in all "
                 f"({int((quiet[level] >= loud).sum())} of them loud only for a moment: a click in silence?); the "
                 f"quietest: {quietest}")
    elif len(quiet["id"]):
        found = (f"peak below {limit:g} dBFS, less any DC offset (silent or all but silent, the "
                 f"quietest {_dbfs(float(quiet[level][0]))}) yet have transcripts")
    return _suspect_clips(NEAR_SILENT, quiet["id"], index.num_rows, found, "a muted track, or audio cut from the wrong place?",
                          max_rate, batch, {"peak_limit_dbfs": limit,
                                            "sound_limit_seconds": audio_quality.NEAR_SILENT_SOUND_SECONDS})


def cancelling_downmix(shard_dir: Path, max_rate: float, batch: str | None = None) -> dg.AssetCheckResult:
    """Kept clips whose channels cancel in the mix to mono (the index's mix_retention)."""
    index = audio_quality.read_index(shard_dir, ["id", "channels", "mix_retention"])
    cancelled = tables.numpy_columns(audio_quality.cancelled_by_downmix(index))
    found = (f"have channels that cancel when averaged to mono (the mix, or a pair of channels, keeping as little as "
             f"{float(cancelled['mix_retention'][0]):.0%} of their energy): a channel with inverted polarity "
             "takes out what the channels share, usually the dialogue") if len(cancelled["id"]) else ""
    return _suspect_clips(CANCELLING_DOWNMIX, cancelled["id"], index.num_rows, found,
                          "listen to each channel alone: one out of phase with the others is inverted (a "
                          "matrix-encoded Lt/Rt mix with loud surround sound measures like this too, and keeps its "
                          "dialogue: leave that one)",
                          max_rate, batch, {"retention_limit": audio_quality.CANCELLING_RETENTION,
                                            "multichannel_clips": int((tables.to_numpy(index.column("channels"))
                                                                       > 1).sum())})


def _suspect_clips(check: str, suspects: np.ndarray, rows: int, found: str, hint: str, max_rate: float,
                   batch: str | None, metadata: dict) -> dg.AssetCheckResult:
    """Kept clips whose audio does not carry their transcript's speech: a warning that names them; an error that
    blocks the batch when they are more than max_rate of it and at least BLOCK_MIN_CLIPS, or more than half of it
    and at least 3 (a muted source, a decoder giving zeros, a whole transfer out of phase)."""
    share = len(suspects) / rows if rows else 0.0
    # a muted source feeding a trickle of small batches must not pass for ever as warnings: most of a small batch
    # blocks it too (3 clips at least, so one quiet clip in a batch of two does not)
    blocks = share > max_rate and (len(suspects) >= BLOCK_MIN_CLIPS or (share > 0.5 and len(suspects) >= 3))
    shown = [int(i) for i in suspects[:IDS_SHOWN]]  # suspects: their ids, in the order to name them
    description = None
    if len(suspects):
        more = f" and {len(suspects) - len(shown)} more" if len(suspects) > len(shown) else ""
        fix = (f"The batch is blocked: more than ASR_MAX_SUSPECT_AUDIO_RATE ({max_rate:.0%}) of its kept clips. Fix "
               f"the files and run `asr-pipeline backfill {batch or 'BATCH'}`, or raise ASR_MAX_SUSPECT_AUDIO_RATE "
               "to let them in." if blocks else
               f"They stay in the batch. Fix the files and run `asr-pipeline backfill {batch or 'BATCH'}`, or "
               "delete the rows from the table: a deleted row is left out of every training after it (a test row "
               "stays in the report until its batch is ingested again).")
        description = (f"{len(suspects)} of {rows} kept clips ({share:.1%}) {found}: ids "
                       f"{', '.join(map(str, shown))}{more}; {hint}. {fix}")
    return dg.AssetCheckResult(
        check_name=check, asset_key="resampled_dataset", passed=not len(suspects),
        severity=dg.AssetCheckSeverity.ERROR if blocks else dg.AssetCheckSeverity.WARN, description=description,
        metadata={"clips": len(suspects), "share": share, "max_rate": max_rate, "ids": dg.MetadataValue.json(shown),
                  **metadata})


def _dbfs(peak: float) -> str:
    return f"{20 * np.log10(peak):.1f} dBFS" if peak > 0 else "no sound at all (every sample the same)"


def features_match_model(shard_dir: Path) -> dg.AssetCheckResult:
    from asr_pipeline.core.model import model_num_mel_bins  # the config.json alone: no transformers import

    meta = json.loads((shard_dir / "meta.json").read_text())
    index = tables.numpy_columns(tables.read_table(shard_dir / "index.parquet", ["num_frames", "label_length"]))
    model_mels = model_num_mel_bins(meta["model"])
    stored = (shard_dir / "features.f16").stat().st_size
    problems = []
    if meta["num_mel_bins"] != model_mels:
        problems.append(f"{meta['num_mel_bins']} mel bins stored, model expects {model_mels}")
    if stored != int(index["num_frames"].sum()) * meta["num_mel_bins"] * 2:
        problems.append("features.f16 size does not match the index")
    if len(index["num_frames"]) and (index["num_frames"].max() > FRAMES_30S or index["num_frames"].min() < 1):
        problems.append("a clip has no frames or more than 3000")
    if len(index["label_length"]) and index["label_length"].max() > MAX_LABEL_TOKENS:
        problems.append("a label is longer than 448 tokens")
    return dg.AssetCheckResult(check_name=FEATURE_SHAPES, asset_key="featurized_shards", passed=not problems,
                               description="; ".join(problems) or None,
                               metadata={"num_mel_bins": meta["num_mel_bins"], "model_num_mel_bins": model_mels})
