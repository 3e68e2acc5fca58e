"""An audio shard: 16 kHz mono clips as int16 PCM in an Arrow file, written by audio.resample_manifest.

Shard layout (a directory):
  audio.arrow       an Arrow IPC stream, one row a clip, in index order: id (int64), samples (list<int16>, 16 kHz
                    mono), scale (float32). A Hugging Face `datasets` file: `datasets.Dataset.from_file(path)` opens
                    it memory-mapped, as AudioShard does (no copy: the int16 samples are views of the file).
  index.parquet     one row a clip: the manifest columns + num_samples, duration, source_rate, channels, peak
                    (largest |sample| after resampling), scale, audio_sha256; since 2026-11-27 also
                    mix_retention (audio_quality.mix_retention, of the source's channels) and ac_peak (the
                    mix's peak less any DC offset, before resampling), and later that day sound_seconds
                    (audio_quality.sound_seconds: how long the 16 kHz mix has sound)
  meta.json         rows, quarantined, sample_rate, total_seconds, clips_past_full_scale, near_silent_clips,
                    cancelling_downmix_clips
  quarantine.parquet  rows left out, with the reason (missing file, undecodable, too short/long, empty transcript)

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
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from asr_pipeline.core.storage import resolved
from asr_pipeline.core.tables import from_numpy, read_table, to_numpy

SAMPLE_RATE = 16_000
QUARANTINE_COLUMNS = ["id", "audio_path", "reason"]
AUDIO_FILE = "audio.arrow"
LEGACY_AUDIO_FILE = "audio.f32"  # float32 shards written before AUDIO_FORMAT 3
PCM_STEP = 2.0 ** -15  # soundfile reads 16-bit PCM as k / 32768
RECORD_BATCH_CLIPS = 256  # clips a record batch holds at most; and at most RECORD_BATCH_SAMPLES samples
RECORD_BATCH_SAMPLES = 2**26  # 128 MB of int16 waiting in memory; far below list<int16>'s 2**31 offsets


def audio_schema(sample_rate: int = SAMPLE_RATE) -> pa.Schema:
    """audio.arrow's columns; the sample rate the clips were resampled to rides along as schema metadata."""
    return pa.schema([("id", pa.int64()), ("samples", pa.list_(pa.int16())), ("scale", pa.float32())],
                     metadata={"sample_rate": str(sample_rate)})


def record_batch(clips: list[tuple[int, np.ndarray, float]], schema: pa.Schema) -> pa.RecordBatch:
    """(id, int16 samples, scale) of consecutive clips as one record batch."""
    lengths = np.array([len(pcm) for _, pcm, _ in clips], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    if offsets[-1] >= 2**31:  # list<int16> has int32 offsets: only a single clip of 37 hours gets here
        raise ValueError("a clip too long for one record batch")
    # Arrow arrays over numpy buffers: pa.array on numpy data would import pandas (asr_pipeline.core.tables)
    samples = pa.ListArray.from_arrays(from_numpy(offsets.astype(np.int32)),
                                       from_numpy(np.concatenate([pcm for _, pcm, _ in clips]).astype(np.int16,
                                                                                                      copy=False)))
    return pa.record_batch([from_numpy(np.array([i for i, _, _ in clips], np.int64)), samples,
                            from_numpy(np.array([scale for _, _, scale in clips], np.float32))], schema=schema)


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
        self.root = resolved(self.path)  # one version throughout, even when the batch is republished meanwhile
        # pyarrow, not pandas: an ingest never imports pandas (core/tables.py); `index` is the DataFrame on demand
        self.index_table = read_table(self.root / "index.parquet")
        if (self.root / AUDIO_FILE).exists():
            self._open_arrow(self.root / AUDIO_FILE)
        else:
            self._open_legacy_float32(self.root / LEGACY_AUDIO_FILE)

    @cached_property
    def index(self):
        """The index as a pandas DataFrame (for notebooks and tests; the ingest reads index_table)."""
        return self.index_table.to_pandas()

    @cached_property
    def quarantine(self):
        """The rows left out, as a pandas DataFrame."""
        import pandas as pd

        return pd.read_parquet(self.root / "quarantine.parquet")

    def column(self, name: str) -> np.ndarray:
        return to_numpy(self.index_table.column(name))

    def rows(self) -> list[dict]:
        """The index, one dict a clip, in order."""
        return self.index_table.to_pylist()

    def _open_arrow(self, path: Path) -> None:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        self.stored_ids = to_numpy(table.column("id"))
        self._scales = to_numpy(table.column("scale"))
        # one record batch = one chunk; a clip is a slice of its chunk's int16 values
        self._chunks, chunk_of_row, starts, stops = [], [], [], []
        for chunk in table.column("samples").chunks:
            offsets = to_numpy(chunk.offsets)
            self._chunks.append(to_numpy(chunk.values))  # a view of the memory-mapped file
            chunk_of_row.append(np.full(len(chunk), len(self._chunks) - 1))
            starts.append(offsets[:-1]), stops.append(offsets[1:])
        self._chunk_of_row, self._starts, self._stops = (
            (np.concatenate(parts) if parts else np.zeros(0, np.int64)) for parts in (chunk_of_row, starts, stops))

    def _open_legacy_float32(self, path: Path) -> None:
        size = path.stat().st_size
        self._chunks = [np.memmap(path, dtype=np.float32, mode="r") if size else np.zeros(0, np.float32)]
        self._starts = self.column("offset").astype(np.int64)
        # what the file holds, not what the index claims: a truncated audio.f32 shows as short clips
        self._stops = np.minimum(self._starts + self.column("num_samples").astype(np.int64), size // 4)
        self._chunk_of_row = np.zeros(len(self), np.int64)
        self._scales = None
        self.stored_ids = self.column("id")

    def __len__(self) -> int:
        return self.index_table.num_rows

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
