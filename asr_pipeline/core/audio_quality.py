"""How much of a decoded clip is sound its transcript could come from: its level less any DC offset (ac_peak), how long
it has sound (sound_seconds) and what its mix to mono keeps of its channels (mix_retention), and which rows of an
audio shard's index fall short (near_silent, cancelled_by_downmix). audio.resample_manifest records the measures; defs/ingest/checks.py names the
rows, meta.json and `asr-pipeline status` count them (docs/ROBUSTNESS.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from asr_pipeline.core.tables import from_numpy, read_table, to_numpy

# Clips whose audio does not carry their transcript's speech (defs/ingest/checks.py names them; meta.json and
# `status` count them):
# - near-silent: the loudest excursion from the clip's mean (a DC offset is not sound), after the mix to mono, below
#   this. Broadcast speech peaks tens of dB higher (a whispered scene still near -35 dBFS); below it is a muted
#   track or audio cut from the wrong place.
NEAR_SILENT_PEAK_DBFS = -50.0
NEAR_SILENT_PEAK = 10 ** (NEAR_SILENT_PEAK_DBFS / 20)  # as a sample value
#   A peak alone cannot see a muted track with a click in it (an edit point, a digital dropout), so a clip is also
#   near-silent when its sound lasts under NEAR_SILENT_SOUND_SECONDS: its 20 ms windows that swing as far as a wave
#   peaking at that level, added up (sound_seconds). A sharp click rings into one or two windows at 16 kHz; espeak's
#   "네" scaled to -40 dBFS keeps 0.2 s. What lasts longer passes: a decaying mic thump (0.14-0.26 s), a click in an
#   8 kHz MP3 (0.14 s), three clicks.
NEAR_SILENT_SOUND_SECONDS = 0.1
SOUND_WINDOW_SECONDS = 0.02
# - cancelled by the down-mix: the mix, or a pair of channels, keeps less than this share of its energy
#   (mix_retention). Unrelated channels keep all of it (1), alike ones more (up to 2); a channel with inverted
#   polarity against another at the same level keeps nothing, at 60% of its level 12%, and still 20% with a bed of
#   unrelated sound 6 dB under the dialogue in each. A faint inverted crosstalk on an almost silent channel keeps
#   nearly all (the mix loses nothing that matters); matrix-encoded Lt/Rt stereo goes below this only where its
#   surround content is more than 6 dB louder than the dialogue (where 2 / (1 + 10^(6/10)) = 0.4).
CANCELLING_RETENTION = 0.4
MIX_BLOCKS, MIX_BLOCK_FRAMES = 16, 1_000  # what mix_retention looks at: 16 blocks of 1,000 frames at most


NEAR_SILENT_COLUMNS = ["id", "peak", "ac_peak", "sound_seconds", "duration"]  # what near_silent reads


def near_silent(index):
    """The rows of an audio shard's index whose clip is near-silent: too faint (`ac_peak`; shards made before it
    `peak`) or sound for too short a time (`sound_seconds`, in shards made since 2026-11-27: under
    NEAR_SILENT_SOUND_SECONDS, or under half of a clip shorter than twice that), quietest first.
    index: a pyarrow Table (read_index) or a pandas DataFrame; the rows come back as the same kind."""
    names = _names(index)
    level = "ac_peak" if "ac_peak" in names else "peak"
    levels = _column(index, level)
    quiet = levels < NEAR_SILENT_PEAK
    if "sound_seconds" in names:
        needed = NEAR_SILENT_SOUND_SECONDS
        if "duration" in names:  # a clip cut to a single short word may be little more than the word
            needed = np.fmin(needed, _column(index, "duration") / 2)  # (a missing duration: 0.1 s)
        quiet |= _column(index, "sound_seconds") < needed
    return _rows_sorted(index, np.flatnonzero(quiet), levels)


def read_index(shard_dir, columns: list[str]):
    """The columns of an audio shard's index that it has (shards made before 2026-11-27 lack the newer ones), as a
    pyarrow Table."""
    return read_table(Path(shard_dir) / "index.parquet", columns)


def cancelled_by_downmix(index):
    """The rows whose channels cancel in the mix to mono, most cancelled first (none in shards made before
    mix_retention). index: a pyarrow Table or a pandas DataFrame; the rows come back as the same kind."""
    if "mix_retention" not in _names(index):
        return _rows_sorted(index, np.zeros(0, np.int64), np.zeros(0))
    retention = _column(index, "mix_retention")
    return _rows_sorted(index, np.flatnonzero(retention < CANCELLING_RETENTION), retention)


def _is_arrow(index) -> bool:
    return isinstance(index, pa.Table)


def _names(index) -> list[str]:
    return index.column_names if _is_arrow(index) else list(index.columns)


def _column(index, name: str) -> np.ndarray:
    """A number column as float64 (a missing value as NaN, which no comparison selects)."""
    column = to_numpy(index.column(name)) if _is_arrow(index) else index[name]
    return np.asarray(column, dtype=np.float64)


def _rows_sorted(index, positions: np.ndarray, key: np.ndarray):
    """The rows at `positions`, ordered by `key` then id."""
    ids = _column(index, "id")
    order = positions[np.lexsort((ids[positions], key[positions]))] if len(positions) else positions
    return index.take(from_numpy(order.astype(np.int64))) if _is_arrow(index) else index.iloc[order]


def mix_retention(data: np.ndarray) -> float:
    """How much of the channels' sound their mix to mono keeps, at its worst: per pair of channels the share of the
    pair's energy their sum keeps, (v_i + v_j + 2 c_ij) / (v_i + v_j), and for all channels together the mix's
    energy against unrelated channels', 1'C1 / trace(C), means removed (a DC offset is not sound); the lowest of
    these, per block, over MIX_BLOCKS short blocks spread over the clip, and of those the lower quartile of the
    blocks with sound (so a clip cancelled for a third of its length is found, and one odd block is not enough).
    1 for unrelated channels (and for mono, fewer than two channels with sound, or silence), more for alike ones,
    0 for a channel inverted against another at the same level. It weighs the channels by their level: faint
    inverted crosstalk beside a loud channel scores about 1. What cancels, usually the dialogue, is gone from the
    mono mix while the rest (music, ambience) stays, so the clip is not silent."""
    if data.ndim != 2 or data.shape[1] < 2 or len(data) < 2:
        return 1.0
    blocks = np.stack(_blocks(data)).astype(np.float64)  # [blocks, frames, channels]
    centered = blocks - blocks.mean(axis=1, keepdims=True)
    covariance = centered.transpose(0, 2, 1) @ centered  # [blocks, channels, channels]
    if not np.isfinite(covariance).all():
        return 1.0  # non-finite samples: the clip is rejected as non-finite right after
    power = np.diagonal(covariance, axis1=1, axis2=2)  # [blocks, channels]
    live = power > blocks.shape[1] * 1e-12  # an rms above 1e-6 (-120 dBFS): a channel with sound
    with np.errstate(divide="ignore", invalid="ignore"):
        pair = 1 + 2 * covariance / (power[:, :, None] + power[:, None, :])
        whole = covariance.sum(axis=(1, 2)) / power.sum(axis=1)
    counted = live[:, :, None] & live[:, None, :] & ~np.eye(data.shape[1], dtype=bool)  # pairs of channels with sound
    scores = np.minimum(np.where(counted, pair, np.inf).min(axis=(1, 2)),
                        np.where(live.sum(axis=1) >= 2, whole, np.inf))
    energy = power.sum(axis=1)
    loud = (energy > 0) & (energy >= 0.01 * energy.max())
    scores = np.where(np.isinf(scores), 1.0, np.clip(scores, 0.0, 2.0))  # inf: fewer than two channels with sound
    return float(np.percentile(scores[loud], 25)) if loud.any() else 1.0


def _blocks(data: np.ndarray) -> list[np.ndarray]:
    """MIX_BLOCKS contiguous blocks of at most MIX_BLOCK_FRAMES, evenly spread (the whole clip when it is short):
    contiguous, so no stride can fall in step with a tone."""
    frames = len(data)
    length = min(MIX_BLOCK_FRAMES, max(2, frames // MIX_BLOCKS))
    starts = np.linspace(0, frames - length, num=min(MIX_BLOCKS, max(1, frames // length))).astype(int)
    return [data[start:start + length] for start in starts]


def sound_seconds(samples: np.ndarray, rate: int) -> float:
    """How long the clip has sound: the SOUND_WINDOW_SECONDS windows (the last one shorter) whose swing, highest
    sample less lowest (a DC offset does not swing), reaches that of a wave peaking at NEAR_SILENT_PEAK_DBFS, added
    up in seconds."""
    window = max(1, round(rate * SOUND_WINDOW_SECONDS))
    whole = len(samples) // window * window
    swing = 2 * NEAR_SILENT_PEAK
    blocks = samples[:whole].reshape(-1, window)
    loud = int((blocks.max(axis=1) - blocks.min(axis=1) >= swing).sum()) * window
    tail = samples[whole:]
    if len(tail) and float(tail.max()) - float(tail.min()) >= swing:
        loud += len(tail)
    return round(loud / rate, 3)


def ac_peak(samples: np.ndarray) -> float:
    """The largest excursion from the clip's mean: its peak, less any DC offset."""
    mean = float(samples.mean(dtype=np.float64))
    return max(float(samples.max()) - mean, mean - float(samples.min()))
