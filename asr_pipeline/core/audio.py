"""Decode audio files of any common format to 16 kHz mono, and write them as an audio shard (core/audio_shard.py:
int16 PCM in an Arrow file that `datasets` opens memory-mapped), with unusable rows quarantined and the reason.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import soundfile as sf
import soxr

from asr_pipeline.core.audio_shard import (AUDIO_FILE, QUARANTINE_COLUMNS, RECORD_BATCH_CLIPS, RECORD_BATCH_SAMPLES,
                                           SAMPLE_RATE, audio_schema, content_hash, record_batch, to_pcm16)
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.settings import AudioRoots
from asr_pipeline.core.storage import write_json


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
        data, rate = _read_with_libsndfile(path)
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


def _read_with_libsndfile(path: Path) -> tuple[np.ndarray, int]:
    """libsndfile's float32 samples [frames, channels] and rate. A 16-bit file (the archive's WAVs and FLACs) is read
    as int16 and scaled here by 1/32768: the values libsndfile's own conversion gives, at half its cost."""
    with sf.SoundFile(str(path)) as f:
        if f.subtype == "PCM_16":
            samples = f.read(dtype="int16", always_2d=True).astype(np.float32)
            samples *= np.float32(1 / 32768)  # in place: no second float32 copy of the clip
            return samples, f.samplerate
        return f.read(dtype="float32", always_2d=True), f.samplerate


def to_16k_mono(data: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels, then resample with soxr (high quality)."""
    if data.ndim == 2:  # a mono file is taken as it is: numpy's mean over one channel cost 10% of the resampling
        mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    else:
        mono = data
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
    rows = list(manifest.itertuples(index=False))

    def prepare(row):
        try:
            return _prepare_clip(row, limits, roots)
        except AudioError as exc:
            return exc

    # libsndfile (through cffi), soxr and numpy release the GIL, so threads decode, resample and quantize on all cores
    schema = audio_schema(SAMPLE_RATE)
    with pa.OSFile(str(out_dir / AUDIO_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer, \
            ThreadPoolExecutor(workers or _default_workers()) as pool:
        pending, pending_samples = [], 0  # clips waiting to be written as one record batch
        for row, prepared in _ordered_map(pool, prepare, rows):
            if isinstance(prepared, AudioError):
                quarantine.append({"id": row.id, "audio_path": row.audio_path, "reason": str(prepared)})
            else:
                pcm, scale, peak, rate, channels, duration, content_hash = prepared
                pending.append((int(row.id), pcm, scale))
                pending_samples += len(pcm)
                index.append(
                    {**row._asdict(), "num_samples": len(pcm), "duration": duration, "source_rate": rate,
                     "channels": channels, "peak": peak, "scale": scale, "audio_sha256": content_hash}
                )
                if len(pending) == RECORD_BATCH_CLIPS or pending_samples >= RECORD_BATCH_SAMPLES:
                    writer.write_batch(record_batch(pending, schema))
                    pending, pending_samples = [], 0
            progress.advance()
        if pending:
            writer.write_batch(record_batch(pending, schema))
    index_frame = pd.DataFrame(index, columns=[*manifest.columns, "num_samples", "duration", "source_rate",
                                               "channels", "peak", "scale", "audio_sha256"])
    index_frame.to_parquet(out_dir / "index.parquet", index=False)
    pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).to_parquet(out_dir / "quarantine.parquet", index=False)
    summary = {
        "rows": len(index_frame),
        "quarantined": len(quarantine),
        "sample_rate": SAMPLE_RATE,
        "total_seconds": round(float(index_frame["duration"].sum()) if len(index_frame) else 0.0, 3),
        "clips_past_full_scale": int((index_frame["peak"] > 1.0).sum()) if len(index_frame) else 0,
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
    """(int16 16 kHz samples, their scale, peak |sample|, source rate, channels, duration, content hash) for a
    manifest row, or AudioError with the reason."""
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
    pcm, scale = to_pcm16(samples)
    peak = float(np.abs(samples).max())
    return pcm, scale, peak, rate, channels, duration, content_hash(pcm, scale)
