"""Decode audio files of any common format to 16 kHz mono float32, and keep them in a memory-mappable shard.

Shard layout (a directory):
  audio.f32         every clip's samples, concatenated (float32, 16 kHz, mono)
  index.parquet     one row a clip: the manifest columns + offset, num_samples, duration, source_rate, channels
  quarantine.parquet  rows left out, with the reason (missing file, undecodable, too short/long, empty transcript)
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import soundfile as sf
import soxr

from asr_pipeline.core.progress import Progress
from asr_pipeline.core.settings import AudioRoots
from asr_pipeline.core.storage import resolved, write_json

SAMPLE_RATE = 16_000
QUARANTINE_COLUMNS = ["id", "audio_path", "reason"]


class AudioError(Exception):
    """A clip that cannot be used; the message is the quarantine reason."""


def decode(path: str | Path) -> tuple[np.ndarray, int, int]:
    """Return (samples as float32 [frames, channels], sample rate, channels). Tries libsndfile, then librosa."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing audio file")
    if path.stat().st_size == 0:
        raise AudioError("empty audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as first:  # libsndfile handles wav/flac/ogg/mp3; anything else goes through librosa
        try:
            import librosa

            with warnings.catch_warnings():  # its fallback chatter; a failure is reported below
                warnings.simplefilter("ignore")
                mono_or_multi, rate = librosa.load(str(path), sr=None, mono=False)
            data = np.atleast_2d(mono_or_multi).T.astype(np.float32)
        except Exception:
            raise AudioError(f"undecodable audio ({type(first).__name__}: {str(first)[:120]})") from None
    if data.size == 0:
        raise AudioError("audio has no samples")
    if not np.isfinite(data).all():
        raise AudioError("audio holds NaN or infinite samples")
    return data, int(rate), int(data.shape[1])


def to_16k_mono(data: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels, then resample with soxr (high quality)."""
    mono = data.mean(axis=1) if data.ndim == 2 else data
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return mono


def load_16k(path: str | Path) -> np.ndarray:
    """Decode one file to 16 kHz mono float32 (what `transcribe` and notebooks need)."""
    data, rate, _ = decode(path)
    return to_16k_mono(data, rate)


@dataclass(frozen=True)
class AudioLimits:
    min_seconds: float = 0.1
    max_seconds: float = 30.0


def resample_manifest(
    manifest: pd.DataFrame,
    out_dir: Path,
    limits: AudioLimits = AudioLimits(),
    emit: Callable[[str], None] = print,
    roots: AudioRoots | None = None,
    workers: int | None = None,
) -> dict:
    """Decode and resample every manifest row into an audio shard in out_dir. Returns summary counts.

    roots: when given, a path that does not resolve under one of them is quarantined, never opened."""
    out_dir = Path(out_dir)
    index, quarantine = [], []
    progress = Progress("resampling", len(manifest), emit)
    offset = 0
    rows = list(manifest.itertuples(index=False))

    def prepare(row):
        try:
            return _prepare_clip(row, limits, roots)
        except AudioError as exc:
            return exc

    # libsndfile (through cffi) and soxr release the GIL, so threads decode and resample on every core.
    with open(out_dir / "audio.f32", "wb") as samples_file, ThreadPoolExecutor(workers or _default_workers()) as pool:
        for row, prepared in _ordered_map(pool, prepare, rows):
            if isinstance(prepared, AudioError):
                quarantine.append({"id": row.id, "audio_path": row.audio_path, "reason": str(prepared)})
            else:
                samples, rate, channels, duration, content_hash = prepared
                samples_file.write(samples.tobytes())
                index.append(
                    {**row._asdict(), "offset": offset, "num_samples": len(samples), "duration": duration,
                     "source_rate": rate, "channels": channels, "audio_sha256": content_hash}
                )
                offset += len(samples)
            progress.advance()
    index_frame = pd.DataFrame(index, columns=[*manifest.columns, "offset", "num_samples", "duration",
                                               "source_rate", "channels", "audio_sha256"])
    index_frame.to_parquet(out_dir / "index.parquet", index=False)
    pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).to_parquet(out_dir / "quarantine.parquet", index=False)
    summary = {
        "rows": len(index_frame),
        "quarantined": len(quarantine),
        "sample_rate": SAMPLE_RATE,
        "total_seconds": round(float(index_frame["duration"].sum()) if len(index_frame) else 0.0, 3),
    }
    write_json(out_dir / "meta.json", summary)
    return summary


def _ordered_map(pool, fn, items, window: int = 256):
    """pool.map in windows, so at most `window` decoded clips wait in memory for their turn to be written."""
    for start in range(0, len(items), window):
        chunk = items[start: start + window]
        yield from zip(chunk, pool.map(fn, chunk))


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _prepare_clip(row, limits: AudioLimits, roots: AudioRoots | None):
    """(16 kHz samples, source rate, channels, duration, content hash) for a manifest row, or AudioError with the
    reason."""
    if not row.transcript:
        raise AudioError("empty transcript")
    path = row.audio_path
    if not path:
        raise AudioError("no audio path")
    if roots is not None:
        path = roots.resolve(row.audio_path)
        if path is None:
            raise AudioError(roots.reason())
    data, rate, channels = decode(path)
    samples = to_16k_mono(data, rate)
    duration = len(samples) / SAMPLE_RATE
    if duration < limits.min_seconds:
        raise AudioError(f"audio shorter than {limits.min_seconds} s ({duration:.3f} s)")
    if duration > limits.max_seconds:
        raise AudioError(f"audio longer than {limits.max_seconds} s ({duration:.1f} s)")
    return samples, rate, channels, duration, content_hash(samples)


def content_hash(samples: np.ndarray) -> str:
    """sha256 of the decoded 16 kHz mono samples, not of the file: the same recording exported twice (WAV and FLAC,
    other tags or headers, another file name) has different bytes but the same samples, and the samples are what
    the model sees. Computed in the decoding threads (hashlib releases the GIL on large buffers)."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


class AudioShard:
    """Read side of a resampled shard: clips are memory-mapped, not loaded."""

    def __init__(self, path: Path):
        self.path = Path(path)
        root = resolved(self.path)  # one version throughout, even when the batch is republished meanwhile
        self.index = pd.read_parquet(root / "index.parquet")
        self.quarantine = pd.read_parquet(root / "quarantine.parquet")
        size = (root / "audio.f32").stat().st_size
        self._samples = np.memmap(root / "audio.f32", dtype=np.float32, mode="r") if size else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def samples(self, i: int) -> np.ndarray:
        row = self.index.iloc[i]
        return np.asarray(self._samples[int(row["offset"]): int(row["offset"]) + int(row["num_samples"])])
