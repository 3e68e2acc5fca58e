"""Decode audio files of any common format to 16 kHz mono, and keep them as int16 PCM in a memory-mapped shard.

Shard layout (a directory):
  audio.arrow       an Arrow IPC stream, one row a clip, in index order: id (int64), samples (list<int16>, 16 kHz
                    mono), scale (float32). A Hugging Face `datasets` file: `datasets.Dataset.from_file(path)` opens
                    it memory-mapped, as AudioShard does (no copy: the int16 samples are views of the file).
  index.parquet     one row a clip: the manifest columns + num_samples, duration, source_rate, channels, peak
                    (largest |sample| after resampling), scale, audio_sha256
  quarantine.parquet  rows left out, with the reason (missing file, undecodable, too short/long, empty transcript)
  meta.json         rows, quarantined, sample_rate, total_seconds, clips_past_full_scale

A clip is the float32 audio samples * scale: 2 bytes a sample, half of float32 (192 KB, not 384 KB, for a 6 s
clip). The scale is chosen per clip (to_pcm16): 2**-15 where that stores the clip bit for bit (a 16-bit source at
16 kHz), else the clip's peak / 32767, so the int16 range spans every clip, quiet or loud. A clip that resampling
(soxr overshoots near full scale) or a float source took past 1.0 is therefore scaled, never clipped, and read back
at its own level; meta.json counts them (`clips_past_full_scale`). How far the int16 rounding moves the log-mel
features is bounded in asr_pipeline_tests/core/test_compact_audio.py.

Shards written before the int16 format (audio.f32: float32 samples, concatenated, located by the index's `offset`
column) still read.
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
import pyarrow as pa
import soundfile as sf
import soxr

from asr_pipeline.core.progress import Progress
from asr_pipeline.core.settings import AudioRoots
from asr_pipeline.core.storage import resolved, write_json

SAMPLE_RATE = 16_000
QUARANTINE_COLUMNS = ["id", "audio_path", "reason"]
AUDIO_FILE = "audio.arrow"
LEGACY_AUDIO_FILE = "audio.f32"  # float32 shards written before AUDIO_FORMAT 3
PCM_STEP = 2.0 ** -15  # soundfile reads 16-bit PCM as k / 32768
RECORD_BATCH_CLIPS = 256  # clips a record batch holds at most; and at most RECORD_BATCH_SAMPLES samples
RECORD_BATCH_SAMPLES = 2**26  # 128 MB of int16 waiting in memory; far below list<int16>'s 2**31 offsets


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
    schema = audio_schema()
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
                    writer.write_batch(_record_batch(pending, schema))
                    pending, pending_samples = [], 0
            progress.advance()
        if pending:
            writer.write_batch(_record_batch(pending, schema))
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


def audio_schema() -> pa.Schema:
    """audio.arrow's columns; the sample rate rides along as schema metadata."""
    return pa.schema([("id", pa.int64()), ("samples", pa.list_(pa.int16())), ("scale", pa.float32())],
                     metadata={"sample_rate": str(SAMPLE_RATE)})


def _record_batch(clips: list[tuple[int, np.ndarray, float]], schema: pa.Schema) -> pa.RecordBatch:
    """(id, int16 samples, scale) of consecutive clips as one record batch."""
    lengths = np.array([len(pcm) for _, pcm, _ in clips], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    if offsets[-1] >= 2**31:  # list<int16> has int32 offsets: only a single clip of 37 hours gets here
        raise ValueError("a clip too long for one record batch")
    samples = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                       pa.array(np.concatenate([pcm for _, pcm, _ in clips])))
    return pa.record_batch([pa.array([i for i, _, _ in clips], pa.int64()), samples,
                            pa.array([scale for _, _, scale in clips], pa.float32())], schema=schema)


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


def to_pcm16(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """(int16 samples, scale) with samples ~= int16 * scale.

    A clip whose samples are all multiples of PCM_STEP within int16's range (a 16-bit source at 16 kHz: nothing was
    resampled) keeps PCM_STEP and is stored bit for bit. Any other clip gets the step that spans its own peak,
    peak / 32767: every clip uses the whole int16 range, so its rounding noise lies about 98 dB below its peak,
    under the 80 dB that Whisper's log-mel keeps below its loudest bin, however quiet the clip is; and a clip that
    resampling (or a float source) took past full scale is scaled down, never clipped."""
    samples = np.asarray(samples, dtype=np.float32)
    steps = samples * np.float32(1 / PCM_STEP)  # exact: a power of two
    head = steps[:1024]  # a resampled clip fails here already, without rounding the whole clip
    if (np.array_equal(head, np.rint(head)) and np.array_equal(steps, np.rint(steps))
            and steps.min(initial=0) >= -32768 and steps.max(initial=0) <= 32767):
        return steps.astype(np.int16), PCM_STEP
    scale = np.float32(float(np.abs(samples).max()) / 32767)
    # rounding the step to float32 can put the peak a hair past 32767: clip that (half a step at most)
    return np.clip(np.rint(samples / scale), -32768, 32767).astype(np.int16), float(scale)


def from_pcm16(pcm: np.ndarray, scale: float) -> np.ndarray:
    """The float32 audio a stored clip stands for (exact: an int16 times a float32 step)."""
    return pcm.astype(np.float32) * np.float32(scale)


def content_hash(pcm: np.ndarray, scale: float) -> str:
    """sha256 of the stored clip (its float32 scale, then its int16 samples, little-endian), not of the file: the
    same recording exported twice (WAV and FLAC, other tags or headers, another file name) has different bytes but
    the same samples, and the samples are what the model sees. Computed in the decoding threads (hashlib releases
    the GIL on large buffers)."""
    digest = hashlib.sha256(np.float32(scale).astype("<f4").tobytes())
    digest.update(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
    return digest.hexdigest()


class AudioShard:
    """Read side of a resampled shard: clips are memory-mapped, not loaded (Arrow's reader on a memory map hands out
    views of the file). samples(i) is float32, as the feature extractor takes it; pcm(i) the stored int16."""

    def __init__(self, path: Path):
        self.path = Path(path)
        root = resolved(self.path)  # one version throughout, even when the batch is republished meanwhile
        self.index = pd.read_parquet(root / "index.parquet")
        self.quarantine = pd.read_parquet(root / "quarantine.parquet")
        if (root / AUDIO_FILE).exists():
            self._open_arrow(root / AUDIO_FILE)
        else:
            self._open_legacy_float32(root / LEGACY_AUDIO_FILE)

    def _open_arrow(self, path: Path) -> None:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        self.stored_ids = table.column("id").to_numpy()
        self._scales = table.column("scale").to_numpy()
        # one record batch = one chunk; a clip is a slice of its chunk's int16 values
        self._chunks, chunk_of_row, starts, stops = [], [], [], []
        for chunk in table.column("samples").chunks:
            offsets = chunk.offsets.to_numpy()
            self._chunks.append(chunk.values.to_numpy(zero_copy_only=True))
            chunk_of_row.append(np.full(len(chunk), len(self._chunks) - 1))
            starts.append(offsets[:-1]), stops.append(offsets[1:])
        self._chunk_of_row, self._starts, self._stops = (
            (np.concatenate(parts) if parts else np.zeros(0, np.int64)) for parts in (chunk_of_row, starts, stops))

    def _open_legacy_float32(self, path: Path) -> None:
        size = path.stat().st_size
        self._chunks = [np.memmap(path, dtype=np.float32, mode="r") if size else np.zeros(0, np.float32)]
        self._starts = self.index["offset"].to_numpy(np.int64)
        # what the file holds, not what the index claims: a truncated audio.f32 shows as short clips
        self._stops = np.minimum(self._starts + self.index["num_samples"].to_numpy(np.int64), size // 4)
        self._chunk_of_row = np.zeros(len(self.index), np.int64)
        self._scales = None
        self.stored_ids = self.index["id"].to_numpy()

    def __len__(self) -> int:
        return len(self.index)

    def stored_lengths(self) -> np.ndarray:
        """Samples stored for each clip, from the audio file itself."""
        return self._stops - self._starts

    def pcm(self, i: int) -> np.ndarray:
        """The stored int16 samples of clip i (a view of the memory-mapped file)."""
        if self._scales is None:
            raise ValueError(f"{self.path} is a float32 shard from before the int16 format")
        return self._chunks[self._chunk_of_row[i]][self._starts[i]: self._stops[i]]

    def samples(self, i: int) -> np.ndarray:
        """Clip i as 16 kHz mono float32."""
        if self._scales is None:
            return np.asarray(self._chunks[0][self._starts[i]: self._stops[i]])
        return from_pcm16(self.pcm(i), float(self._scales[i]))
