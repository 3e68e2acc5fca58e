"""Decode audio files of any common format to 16 kHz mono, and write them as an audio shard (core/audio_shard.py:
int16 PCM in an Arrow file that `datasets` opens memory-mapped), with unusable rows quarantined and the reason.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import soxr

from asr_pipeline.core.audio_quality import (ac_peak, cancelled_by_downmix, mix_retention, near_silent,
                                             sound_seconds)
from asr_pipeline.core.audio_shard import (AUDIO_FILE, QUARANTINE_COLUMNS, RECORD_BATCH_CLIPS, RECORD_BATCH_SAMPLES,
                                           SAMPLE_RATE, audio_schema, content_hash, record_batch, to_pcm16)
from asr_pipeline.core.manifest import is_blank_transcript, manifest_records, row_id
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.read_ahead import map_in_windows, read_ahead
from asr_pipeline.core.settings import AudioRoots
from asr_pipeline.core.storage import write_json
from asr_pipeline.core.tables import to_table, write_rows

# what resample_manifest adds to the manifest's columns in index.parquet
INDEX_COLUMNS = ["num_samples", "duration", "source_rate", "channels", "peak", "scale", "audio_sha256",
                 "mix_retention", "ac_peak", "sound_seconds"]


class AudioError(Exception):
    """A clip that cannot be used; the message is the quarantine reason."""


class TooLong(AudioError):
    """A file longer than the caller's limit, found from its header or by reading no further than the limit."""

    def __init__(self, max_seconds: float, seconds: float | None):
        self.seconds = seconds
        super().__init__(f"audio longer than {max_seconds} s" + (f" ({seconds:.2f} s)" if seconds else ""))


# What FFmpeg may open: media containers only, from local files only. Its playlist and concatenation readers (HLS
# .m3u8, ffconcat) would otherwise read other files or URLs named inside a file that passed ASR_AUDIO_ROOTS.
FFMPEG_OPTIONS = {"protocol_whitelist": "file",
                  "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,aac,matroska,webm,ogg,mp3,wav,w64,flac,asf,aiff,caf,"
                                      "mpegts,mpeg,ac3,eac3"}

# how far past max_seconds a file is read before it counts as too long: resampling to 16 kHz can move a length by a
# sample, and the exact limit is checked on the resampled clip (a file of 30.00 s must not be cut here)
READ_MARGIN_SECONDS = 1.0


def decode(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int, int]:
    """Return (samples as float32 [frames, channels], sample rate, channels). Tries libsndfile (wav, flac, ogg, mp3),
    then FFmpeg through PyAV (m4a/aac and whatever else FFmpeg reads). max_seconds: a longer file raises
    TooLong without being read whole (a row pointing at an hour-long programme must not cost gigabytes)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing audio file")
    if path.stat().st_size == 0:
        raise AudioError("empty audio file")
    limit = None if max_seconds is None else max_seconds + READ_MARGIN_SECONDS
    try:
        data, rate = _read_with_libsndfile(path, limit)
    except TooLong as long:
        raise TooLong(max_seconds, long.seconds) from None
    except Exception as first:
        try:
            data, rate = _read_with_pyav(path, limit)
        except TooLong as long:
            raise TooLong(max_seconds, long.seconds) from None
        except Exception as second:
            raise AudioError(f"undecodable audio (libsndfile: {type(first).__name__}: {str(first)[:100]}; FFmpeg: "
                             f"{type(second).__name__}: {str(second)[:100]})") from None
    if data.size == 0:
        raise AudioError("audio has no samples")
    if not np.isfinite(data).all():
        raise AudioError("audio holds NaN or infinite samples")
    return data, int(rate), int(data.shape[1])


def _read_with_libsndfile(path: Path, limit: float | None = None) -> tuple[np.ndarray, int]:
    """libsndfile's float32 samples [frames, channels] and rate. A 16-bit file (the archive's WAVs and FLACs) is read
    as int16 and scaled here by 1/32768: the values libsndfile's own conversion gives, at half its cost."""
    with sf.SoundFile(str(path)) as f:
        if limit is not None and f.frames > limit * f.samplerate:  # the header's length: nothing read
            raise TooLong(limit, f.frames / f.samplerate)
        if f.subtype == "PCM_16":
            samples = f.read(dtype="int16", always_2d=True).astype(np.float32)
            samples *= np.float32(1 / 32768)  # in place: no second float32 copy of the clip
            return samples, f.samplerate
        return f.read(dtype="float32", always_2d=True), f.samplerate


def _read_with_pyav(path: Path, limit: float | None = None) -> tuple[np.ndarray, int]:
    """FFmpeg's float32 samples [frames, channels] and rate, of the file's main audio stream (FFmpeg's choice).
    Decoding stops once past `limit` seconds (compressed formats' headers often give no exact length). A stream whose
    rate or channel layout changes midway (broadcast transport streams do) is brought to its first part's rate; if
    the layout changed, each part is averaged to mono on its own, as to_16k_mono averages a file (FFmpeg's channel
    mixing would make a stereo part after a 5.1 one about 10 dB quieter than the same part alone)."""
    import av

    with av.open(str(path), options=dict(FFMPEG_OPTIONS)) as container:
        if not container.streams.audio:
            raise AudioError("no audio stream")
        stream = container.streams.best("audio") or container.streams.audio[0]
        chunks, frames, rate = [], 0, 0
        converter, source = None, None

        def drain(pending):
            nonlocal frames
            for converted in pending:
                chunks.append(converted.to_ndarray().reshape(-1, len(converted.layout.channels)))
                frames += len(chunks[-1])

        for frame in container.decode(stream):
            shape = (frame.sample_rate, frame.layout.name, frame.format.name)
            if shape != source:  # the first frame, or the stream changed: a converter to float32 at the first rate
                if converter is not None:
                    drain(converter.resample(None))
                rate = rate or frame.sample_rate
                converter, source = av.AudioResampler(format="flt", layout=frame.layout.name, rate=rate), shape
            drain(converter.resample(frame))
            if limit is not None and frames > limit * rate:
                whole = float(container.duration) / 1_000_000 if container.duration else None
                raise TooLong(limit, whole)
        if converter is not None:
            drain(converter.resample(None))  # what the converter still holds
    if not chunks:
        return np.zeros((0, 1), np.float32), rate or SAMPLE_RATE
    if len({chunk.shape[1] for chunk in chunks}) > 1:  # the layout changed: mono, part by part
        chunks = [chunk.mean(axis=1, keepdims=True, dtype=np.float32) for chunk in chunks]
    return np.concatenate(chunks).astype(np.float32, copy=False), int(rate)


def to_16k_mono(data: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels, then resample with soxr (high quality)."""
    return resample_to_16k(downmix(data), rate)


def downmix(data: np.ndarray) -> np.ndarray:
    """The channels' mean as float32 [frames] (a 1-D array is taken as mono): the values of numpy's
    data.mean(axis=1), the ingest's down-mix since its start."""
    if data.ndim == 1 or data.shape[1] == 1:  # mono is taken as it is (a mean over one channel cost 10% of resampling)
        return np.ascontiguousarray(data.reshape(len(data)), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows as inf, which the caller rejects
        mono = _channel_mean(data) if data.shape[1] < 8 else data.mean(axis=1)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _channel_mean(data: np.ndarray) -> np.ndarray:
    """numpy's mean over fewer than 8 channels, computed a channel at a time. numpy reduces each frame's handful of
    values on its own: 4.4 ms for 3.5 s of 48 kHz stereo, more than resampling it, against 0.35 ms for whole columns
    added in turn (benchmarks/clip_stages.py). Below 8 values numpy adds in order, so the sums, and the division,
    are the same values (tested); only a frame of negative zeros keeps its sign here, which int16 storage drops."""
    total = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
        total += data[:, channel]
    total /= data.shape[1]
    return total


def resample_to_16k(mono: np.ndarray, rate: int) -> np.ndarray:
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
    manifest,
    out_dir: Path,
    limits: AudioLimits = AudioLimits(),
    emit: Callable[[str], None] = print,
    roots: AudioRoots | None = None,
    workers: int | None = None,
) -> dict:
    """Decode and resample every manifest row into an audio shard in out_dir. Returns summary counts.

    manifest: manifest.manifest_rows' rows (dicts), or a pandas DataFrame or pyarrow Table with those columns.
    roots: when given, a path that does not resolve under one of them is quarantined, never opened."""
    out_dir = Path(out_dir)
    index, quarantine = [], []
    columns, rows = manifest_records(manifest)
    progress = Progress("resampling", len(rows), emit)

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
        for row, prepared in map_in_windows(pool, prepare, rows, lambda window: read_ahead(
                [r.audio_path for r in window if _opened_if_usable(r)], roots)):
            if isinstance(prepared, AudioError):
                quarantine.append({"id": row_id(row.id), "audio_path": row.audio_path, "reason": str(prepared)})
            else:
                pcm, scale, peak, rate, channels, duration, content_hash, retention, excursion, sound = prepared
                pending.append((int(row.id), pcm, scale))
                pending_samples += len(pcm)
                index.append(
                    {**dict(zip(columns, row)), "id": int(row.id), "num_samples": len(pcm), "duration": duration, "source_rate": rate,
                     "channels": channels, "peak": peak, "scale": scale, "audio_sha256": content_hash,
                     "mix_retention": retention, "ac_peak": excursion, "sound_seconds": sound}
                )
                if len(pending) == RECORD_BATCH_CLIPS or pending_samples >= RECORD_BATCH_SAMPLES:
                    writer.write_batch(record_batch(pending, schema))
                    pending, pending_samples = [], 0
            progress.advance()
        if pending:
            writer.write_batch(record_batch(pending, schema))
    index_table = to_table(index, [*columns, *INDEX_COLUMNS])
    pq.write_table(index_table, out_dir / "index.parquet")
    write_rows(out_dir / "quarantine.parquet", quarantine, QUARANTINE_COLUMNS)
    summary = {
        "rows": len(index),
        "quarantined": len(quarantine),
        "sample_rate": SAMPLE_RATE,
        "total_seconds": round(sum(float(r["duration"]) for r in index), 3) if index else 0.0,
        "clips_past_full_scale": sum(float(r["peak"]) > 1.0 for r in index),
        # kept clips the audio checks name (defs/ingest/checks.py); `status` adds these up over the batches
        "near_silent_clips": len(near_silent(index_table)),
        "cancelling_downmix_clips": len(cancelled_by_downmix(index_table)),
    }
    write_json(out_dir / "meta.json", summary)
    return summary


def _opened_if_usable(row) -> bool:
    """Whether _prepare_clip gets as far as opening the row's file (rows refused before that are not read ahead)."""
    return row_id(row.id) is not None and bool(row.transcript) and not is_blank_transcript(row.transcript)


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _prepare_clip(row, limits: AudioLimits, roots: AudioRoots | None):
    """(int16 16 kHz samples, their scale, peak |sample|, source rate, channels, duration, content hash, the
    least share of its energy a pair of channels keeps in the mix, the mix's peak less any DC offset, how long the
    mix has sound) for a manifest row, or AudioError with the reason."""
    if row_id(row.id) is None:
        raise AudioError(f"row id {row.id!r} is not a whole number from 0 to 2**63 - 1")
    if not row.transcript or is_blank_transcript(row.transcript):
        raise AudioError("empty transcript")
    path = row.audio_path
    if not path:
        raise AudioError("no audio path")
    if roots is not None:
        try:
            path = roots.resolve(path)
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symbolic-link loop: this row, not the batch
            raise AudioError(f"unresolvable audio path ({type(exc).__name__}: {str(exc)[:100]})") from None
        if path is None:
            raise AudioError(roots.reason())
    data, rate, channels = decode(path, max_seconds=limits.max_seconds)
    mono = downmix(data)
    retention = mix_retention(data)
    samples = resample_to_16k(mono, rate)
    if not np.isfinite(samples).all():  # finite but huge float samples overflow when the channels are averaged
        raise AudioError("audio holds NaN or infinite samples after mixing to mono")
    duration = len(samples) / SAMPLE_RATE
    if duration < limits.min_seconds:
        raise AudioError(f"audio shorter than {limits.min_seconds} s ({duration:.3f} s)")
    if duration > limits.max_seconds:
        raise AudioError(f"audio longer than {limits.max_seconds} s ({duration:.2f} s)")
    pcm, scale = to_pcm16(samples)
    peak = float(np.abs(samples).max())
    # ac_peak: the lower of the mix's before and after resampling. Before: soxr rings at the edges of a constant, so a
    # dead source with a DC offset at 48 kHz would come out near -30 dBFS. After: what resampling removes (a 19 kHz
    # pilot tone of an off-air recording) is not sound the model hears.
    # sound_seconds: of the 16 kHz mix, what the model hears (a pilot tone resampling removes is not sound)
    return (pcm, scale, peak, rate, channels, duration, content_hash(pcm, scale), round(retention, 4),
            min(ac_peak(mono), ac_peak(samples)), sound_seconds(samples, SAMPLE_RATE))
