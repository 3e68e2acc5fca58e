"""The ingest's Parquet tables without pandas (core/tables.py): the columns built from numpy buffers equal pyarrow's
own conversion, the files read back in pandas exactly as the files pandas wrote, and numbers come back out of Arrow
without pyarrow's to_numpy (which imports pandas)."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from asr_pipeline.core import tables

ROWS = [
    {"id": 3, "audio_path": "/nas/가나다/ep01_0001.wav", "transcript": "안녕하세요 | 여러분\n", "duration": 3.25,
     "labels": [50258, 50264, 50359, 50363, 1, 50257], "audio_sha256": "ab" * 32, "num_frames": 326, "extra": 7},
    {"id": 1, "audio_path": "", "transcript": "", "duration": float("nan"), "labels": [], "audio_sha256": None,
     "num_frames": 1, "extra": 8},
    {"id": 2**40, "audio_path": "b.flac", "transcript": "\U0001f600 emoji", "duration": 0.0, "labels": [7],
     "audio_sha256": "", "num_frames": 0, "extra": -1},
]
COLUMNS = list(ROWS[0])


@pytest.mark.parametrize("name", COLUMNS)
def test_each_column_equals_pyarrows_own_conversion(name):
    values = [row[name] for row in ROWS]
    kind = tables.COLUMN_TYPES.get(name, pa.int64())
    expected = pa.array(values, type=kind, from_pandas=True)  # NaN as null, as pandas wrote it
    for count in (0, 1, 2, 3):
        built = tables.column_array(values[:count], kind)
        built.validate(full=True)
        assert built.equals(expected.slice(0, count)), (name, count)


def test_pandas_reads_our_files_exactly_as_the_files_it_wrote(tmp_path):
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    tables.write_rows(ours, ROWS, COLUMNS)
    pd.DataFrame(ROWS, columns=COLUMNS).to_parquet(theirs, index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(ours), pd.read_parquet(theirs))
    assert tables.read_rows(ours, ["id", "labels", "not_there"])[0] == {"id": 3, "labels": ROWS[0]["labels"]}
    empty = tmp_path / "empty.parquet"
    tables.write_rows(empty, [], ["id", "audio_path", "reason"])
    assert [str(f.type) for f in pa.parquet.read_schema(empty)] == ["int64", "large_string", "large_string"]
    assert pd.read_parquet(empty).empty


def test_numbers_come_out_as_numpy_views_with_missing_values_as_nan():
    ints = tables.from_numpy(np.arange(10, dtype=np.int64))
    assert tables.to_numpy(ints).tolist() == list(range(10))
    assert tables.to_numpy(ints.slice(3, 4)).tolist() == [3, 4, 5, 6]  # an offset into the buffer
    chunked = pa.chunked_array([ints.slice(0, 2), ints.slice(8, 2)])
    assert tables.to_numpy(chunked).tolist() == [0, 1, 8, 9]
    floats = tables.column_array([1.5, None, float("nan"), 2.0], pa.float64())
    out = tables.to_numpy(floats)
    assert out[0] == 1.5 and math.isnan(out[1]) and math.isnan(out[2]) and out[3] == 2.0
    with_nulls = tables.column_array([1, None, 3], pa.int64())
    assert np.isnan(tables.to_numpy(with_nulls)[1]) and tables.to_numpy(with_nulls.slice(2))[0] == 3.0
    assert tables.to_numpy(tables.column_array([], pa.float64())).shape == (0,)
    strings = tables.to_numpy(tables.column_array(["가", None], pa.large_string()))
    assert strings.dtype == object and strings.tolist() == ["가", None]
    lists = tables.to_numpy(tables.column_array([[1, 2], []], pa.list_(pa.int64())))
    assert lists.tolist() == [[1, 2], []]


def test_none_of_it_imports_pandas(tmp_path):
    """What an ingest does with its tables and audio shards, in a process that records any try to import pandas
    (pyarrow swallows an ImportError, so the hook records; the end checks sys.modules too): a batch with a clip and a
    missing file, and a batch whose every row is quarantined (an audio file with no record batch)."""
    import soundfile as sf

    wav = tmp_path / "clip.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(16_000) / 5)).astype(np.float32), 16_000, subtype="PCM_16")
    script = f"""
import sys
tried = []
class NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            tried.append(name)
            raise ImportError("pandas imported")
sys.meta_path.insert(0, NoPandas())
from pathlib import Path
from asr_pipeline.core import audio, audio_quality, tables
from asr_pipeline.core.audio_shard import AudioShard
rows = {ROWS!r}
path = {str(tmp_path / "t.parquet")!r}
tables.write_rows(path, rows, {COLUMNS!r})
tables.numpy_columns(tables.read_table(path, ["id", "duration", "labels"]))
tables.read_rows(path)
for name, clips in (("some", [{str(wav)!r}, "/nowhere.wav"]), ("none", ["/nowhere.wav"])):
    out = Path({str(tmp_path)!r}) / name
    out.mkdir()
    manifest = [dict(id=i + 1, audio_path=p, transcript="네", group="g", split="train") for i, p in enumerate(clips)]
    audio.resample_manifest(manifest, out, emit=lambda line: None)
    shard = AudioShard(out)
    assert len(shard) == len(clips) - 1 and len(shard.column("id")) == len(shard)
    [shard.samples(i) for i in range(len(shard))]
    index = audio_quality.read_index(out, audio_quality.NEAR_SILENT_COLUMNS)
    audio_quality.near_silent(index), audio_quality.cancelled_by_downmix(audio_quality.read_index(out, ["id"]))
    tables.read_rows(out / "quarantine.parquet")
print("tried", tried, "imported", "pandas" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script.replace("nan", "float('nan')")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "tried [] imported False"


def test_values_of_another_type_are_refused_not_converted():
    for values, kind in (([3.7], pa.int64()), ([True], pa.int64()), (["12"], pa.int64()), ([1, "x"], pa.float64()),
                         ([3], pa.large_string()), ([[1, 2.5]], pa.list_(pa.int64()))):
        with pytest.raises(TypeError):
            tables.column_array(values, kind)
    with pytest.raises(TypeError, match="bool"):
        tables.from_numpy(np.array([True, False]))
