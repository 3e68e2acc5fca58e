"""Log-mel features and label ids, stored compactly and rebuilt exactly at batching time.

Whisper's extractor pads every clip to 30 s, and its normalisation clamps the log-mel at (clip max - 8) before
scaling with (x + 4) / 4. Frames past the clip hold only zeros, so after normalisation every one of them equals
max(-1.5, max_normalised - 2): a per-clip constant. We keep the frames that touch audio (float16, frames-major)
and that pad value, and rebuild the padded [n_mels, 3000] input exactly when a batch is made.
The frames are also *computed* from the clip alone (zero-padded just past its last window) rather than from
30 s of padding: identical values (tests compare with the extractor's padded output) for a fraction of the work.

Shard layout (a directory):
  features.f16        frames of every clip, concatenated, shape [total_frames, n_mels]
  index.parquet       audio index columns + offset, num_frames, pad_value, labels, label_length
  quarantine.parquet  rows left out here (label too long), with the reason
  meta.json           num_mel_bins, model, rows
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from asr_pipeline.core.audio_shard import QUARANTINE_COLUMNS, AudioShard
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.storage import resolved, write_json
from asr_pipeline.core.tables import counts, write_rows

HOP_LENGTH = 160
HALF_WINDOW = 200  # n_fft // 2: a centred STFT frame reaches this far either side of its centre
FRAMES_30S = 3000
MAX_LABEL_TOKENS = 448  # Whisper's max_target_positions
CLIPS_IN_FLIGHT = 256  # clips handed to the threads at once: bounded memory, whatever the shard's size
INDEX_COLUMNS = ["id", "audio_path", "transcript", "group", "split", "duration", "audio_sha256", "offset",
                 "num_frames", "pad_value", "labels", "label_length"]


def frames_holding_audio(num_samples: int) -> int:
    """Frames whose window overlaps the clip; every later frame is pure padding."""
    return min(FRAMES_30S, math.ceil((num_samples + HALF_WINDOW) / HOP_LENGTH))


def padding_value(kept: np.ndarray) -> float:
    """The normalised value of a silent frame: log10(1e-10) = -10 clamped at (max - 8), then (x + 4) / 4."""
    return float(max(-1.5, float(kept.max()) - 2.0)) if kept.size else -1.5


def log_mel_frames(feature_extractor, clip: np.ndarray) -> np.ndarray:
    """[n_mels, frames_holding_audio] exactly as the extractor's 30 s-padded output has them.

    Zero-padding the clip to frames*hop samples gives every kept frame the same window contents as in the padded
    30 s signal (the final reflect-pad mirrors zeros), and the clip's maximum is the padded signal's maximum.
    """
    kept = frames_holding_audio(len(clip))
    padded = np.zeros(max(kept * HOP_LENGTH, len(clip)), dtype=np.float32)
    padded[: min(len(clip), len(padded))] = clip[: len(padded)]
    if len(padded) > FRAMES_30S * HOP_LENGTH:  # longer than 30 s: Whisper truncates to 30 s
        padded = padded[: FRAMES_30S * HOP_LENGTH]
    if hasattr(feature_extractor, "log_mel"):  # whisper_inputs.LogMelExtractor: the same values, without torch
        features = feature_extractor.log_mel(padded)
    else:  # transformers' WhisperFeatureExtractor
        features = feature_extractor(padded, sampling_rate=feature_extractor.sampling_rate, padding="longest",
                                     return_tensors="np").input_features[0]
    return features[:, :kept]


def label_ids(tokenizer, text: str) -> list[int]:
    """Whisper's label ids for a transcript: prefix tokens, the text, <|endoftext|>."""
    if hasattr(tokenizer, "label_ids"):  # whisper_inputs.LabelTokenizer
        return tokenizer.label_ids(text)
    return tokenizer(text).input_ids  # transformers' WhisperTokenizer


def rebuild_padded(frames: np.ndarray, pad_value: float, total_frames: int = FRAMES_30S) -> np.ndarray:
    """frames: [num_frames, n_mels] as stored; returns Whisper's [n_mels, 3000] float32 input."""
    out = np.full((frames.shape[1], total_frames), pad_value, dtype=np.float32)
    out[:, : frames.shape[0]] = frames.T
    return out


def featurize_shard(
    audio: AudioShard,
    out_dir: Path,
    feature_extractor,
    tokenizer,
    model_name: str,
    emit: Callable[[str], None] = print,
    workers: int | None = None,
) -> dict:
    """Compute compact log-mels and label ids for every clip of an audio shard into out_dir.

    feature_extractor, tokenizer: model.load_featurizer's (numpy, tokenizers) or a WhisperProcessor's.
    Log-mels are computed on `workers` threads (default: one per core, at most 8), in order."""
    from threadpoolctl import threadpool_limits

    out_dir = Path(out_dir)
    n_mels = int(feature_extractor.feature_size)
    rows, quarantine, kept_rows = [], [], []
    for position, meta in enumerate(audio.rows()):  # labels first: a too long one is not featurized
        labels = label_ids(tokenizer, meta["transcript"])
        if len(labels) > MAX_LABEL_TOKENS:
            quarantine.append({"id": int(meta["id"]), "audio_path": meta["audio_path"],
                               "reason": f"label longer than {MAX_LABEL_TOKENS} tokens ({len(labels)})"})
        else:
            kept_rows.append((position, meta, labels))
    offset = 0
    progress = Progress("featurizing", len(audio), emit)
    progress.advance(len(quarantine))

    def stored_frames(position: int) -> tuple[bytes, int, float]:
        """Clip `position` as stored: float16 frames-major bytes, their count, the pad value. All of it on the
        worker threads, so the writing thread only writes (it held the others back on 2 cores)."""
        kept = log_mel_frames(feature_extractor, audio.samples(position))
        return np.ascontiguousarray(kept.T, dtype=np.float16).tobytes(), kept.shape[1], padding_value(kept)

    # scipy's FFT and numpy's array operations release the GIL, so the threads overlap them on several cores.
    # BLAS is held to one thread per call: its own threads on these small products only contend with ours, and
    # with whatever else runs (measured 5x slower on a busy 2-core machine).
    with (open(out_dir / "features.f16", "wb") as frames_file,
          ThreadPoolExecutor(workers or _default_workers()) as pool,
          threadpool_limits(limits=1, user_api="blas")):
        for start in range(0, len(kept_rows), CLIPS_IN_FLIGHT):
            chunk = kept_rows[start: start + CLIPS_IN_FLIGHT]
            # AudioShard.samples only reads its memory-mapped arrays, so the threads may call it concurrently
            computed = pool.map(stored_frames, [position for position, _, _ in chunk])
            for (_, meta, labels), (frames, num_frames, pad_value) in zip(chunk, computed):
                frames_file.write(frames)
                rows.append(
                    {**{k: meta[k] for k in ("id", "audio_path", "transcript", "group", "split", "duration")},
                     "audio_sha256": meta.get("audio_sha256"),  # exact duplicates never train on what they test
                     "offset": offset, "num_frames": num_frames, "pad_value": pad_value,
                     "labels": [int(t) for t in labels], "label_length": len(labels)}
                )
                offset += num_frames
                progress.advance()
    write_rows(out_dir / "index.parquet", rows, INDEX_COLUMNS)
    write_rows(out_dir / "quarantine.parquet", quarantine, QUARANTINE_COLUMNS)
    summary = {"rows": len(rows), "quarantined": len(quarantine), "num_mel_bins": n_mels, "model": model_name,
               "frames": offset, "splits": counts(row["split"] for row in rows)}
    write_json(out_dir / "meta.json", summary)
    return summary


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class FeatureShard:
    """Read side of a featurized shard: frames are memory-mapped; `features(i)` rebuilds the padded input."""

    def __init__(self, path: Path):
        self.path = Path(path)
        import pandas as pd  # training reads DataFrames; an ingest never imports pandas (core/tables.py)

        root = resolved(self.path)  # one version throughout, even when the batch is republished meanwhile
        self.index = pd.read_parquet(root / "index.parquet")
        self.quarantine = pd.read_parquet(root / "quarantine.parquet")
        self.meta = json.loads((root / "meta.json").read_text())
        self.n_mels = int(self.meta["num_mel_bins"])
        size = (root / "features.f16").stat().st_size
        self._frames = (
            np.memmap(root / "features.f16", dtype=np.float16, mode="r").reshape(-1, self.n_mels)
            if size else np.zeros((0, self.n_mels), np.float16)
        )

    def __len__(self) -> int:
        return len(self.index)

    def frames(self, i: int) -> np.ndarray:
        row = self.index.iloc[i]
        return self._frames[int(row["offset"]): int(row["offset"]) + int(row["num_frames"])]

    def features(self, i: int) -> np.ndarray:
        return rebuild_padded(self.frames(i), float(self.index.iloc[i]["pad_value"]))

    def split_positions(self, split: str) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.index["split"].to_numpy() == split)]
