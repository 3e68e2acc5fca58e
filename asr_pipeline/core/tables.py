"""The ingest's Parquet tables (manifest, audio index, feature index, quarantine) written and read with pyarrow
alone. pandas is not imported by an ingest: its import is 0.2-0.3 s of every `asr-pipeline ingest` process
(docs/BENCHMARKS.md), more from a cold disk. The files are the same Parquet a DataFrame reads and writes
(`pandas.read_parquet` opens them; training and notebooks still use DataFrames), with their column types fixed here
rather than inferred: an empty quarantine file has string columns, not null ones.

pyarrow imports pandas itself, when it is installed, the first time `pa.array` converts Python objects or a numpy
array (to check whether they are pandas objects) and when `pyarrow.dataset` is imported (which `pq.read_table` does).
So the columns are built here from numpy buffers (`pa.Array.from_buffers`), and files are read through
`pq.ParquetFile`: neither path asks for pandas (asr_pipeline_tests/defs/ingest/test_lean_ingest.py holds an ingest
to that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The types pandas gave these columns when it wrote them (strings are large_string in pandas 3), so files written
# before and after read alike. A column not named here has its type inferred from its values.
COLUMN_TYPES = {
    "id": pa.int64(), "source_path": pa.large_string(), "audio_path": pa.large_string(),
    "transcript": pa.large_string(), "group": pa.large_string(), "split": pa.large_string(),
    "num_samples": pa.int64(), "duration": pa.float64(), "source_rate": pa.int64(), "channels": pa.int64(),
    "peak": pa.float64(), "scale": pa.float64(), "audio_sha256": pa.large_string(), "mix_retention": pa.float64(),
    "ac_peak": pa.float64(), "sound_seconds": pa.float64(), "offset": pa.int64(), "num_frames": pa.int64(),
    "pad_value": pa.float64(), "labels": pa.list_(pa.int64()), "label_length": pa.int64(),
    "reason": pa.large_string(),
}


def is_missing(value) -> bool:
    """None, NaN (numpy's too) or pandas' NA: a DataFrame's missing value, stored as null."""
    return value is None or type(value).__name__ == "NAType" or (isinstance(value, (float, np.floating))
                                                                  and value != value)


def to_table(rows: Sequence[dict], columns: Sequence[str]) -> pa.Table:
    """rows (dicts holding at least `columns`) as a table of exactly those columns, in that order."""
    arrays = []
    for name in columns:
        values = [row[name] for row in rows]
        kind = COLUMN_TYPES.get(name) or _inferred_type(values)
        arrays.append(column_array(values, kind))
    return pa.Table.from_arrays(arrays, names=list(columns))


def column_array(values: Sequence, kind: pa.DataType) -> pa.Array:
    """values (None for a missing one) as an Arrow array of `kind`, built from numpy buffers (see the module's
    docstring): int64, float64, large_string and list<int64>; other types through pa.array."""
    missing = [is_missing(value) for value in values]  # null, as pandas wrote them
    validity = _validity(missing)
    present = [value for value, gone in zip(values, missing) if not gone]
    if kind in (pa.int64(), pa.float64()):
        dtype = np.int64 if kind == pa.int64() else np.float64
        _require(present, _INTEGERS if kind == pa.int64() else _NUMBERS, kind)
        data = np.array([0 if gone else value for value, gone in zip(values, missing)], dtype=dtype)
        return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(data)])
    if kind == pa.large_string():
        _require(present, (str,), kind)
        encoded = [b"" if gone else value.encode("utf-8") for value, gone in zip(values, missing)]
        return pa.Array.from_buffers(kind, len(values), [validity, _offsets(encoded, np.int64),
                                                         pa.py_buffer(b"".join(encoded))])
    if kind == pa.list_(pa.int64()):
        items = [[] if gone else value for value, gone in zip(values, missing)]
        _require([v for item in items for v in item], _INTEGERS, kind)
        flat = np.fromiter((int(v) for item in items for v in item), dtype=np.int64)
        children = [pa.Array.from_buffers(pa.int64(), len(flat), [None, pa.py_buffer(flat)])]
        return pa.Array.from_buffers(kind, len(values), [validity, _offsets(items, np.int32)], children=children)
    return pa.array(values, type=kind)


_INTEGERS = (int, np.integer)
_NUMBERS = (int, float, np.integer, np.floating)


def _require(values: Sequence, kinds: tuple, arrow_type: pa.DataType) -> None:
    """What pa.array would refuse is refused here too, rather than converted (a bool or "12" is no int64)."""
    wrong = next((v for v in values if not isinstance(v, kinds) or isinstance(v, (bool, np.bool_))), None)
    if wrong is not None:
        raise TypeError(f"{wrong!r} ({type(wrong).__name__}) in a {arrow_type} column")


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-d numpy array of a fixed-width number type as an Arrow array over its buffer (no copy; pa.array would
    import pandas)."""
    values = np.ascontiguousarray(values)
    if values.dtype.kind not in "iuf":  # a bool array's bytes are no Arrow boolean (a bitmap)
        raise TypeError(f"from_numpy takes integers or floats, not {values.dtype}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _inferred_type(values: Sequence) -> pa.DataType:
    """A column COLUMN_TYPES does not name: int64, float64 or large_string from its values (large_string when empty)."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.large_string()
    for kinds, arrow_type in ((_INTEGERS, pa.int64()), (_NUMBERS, pa.float64()), ((str,), pa.large_string())):
        if all(isinstance(v, kinds) and not isinstance(v, (bool, np.bool_)) for v in present):
            return arrow_type
    return pa.array(present).type  # anything else: pyarrow's inference


def _validity(missing: list[bool]) -> pa.Buffer | None:
    if not any(missing):
        return None
    return pa.py_buffer(np.packbits(~np.array(missing, dtype=bool), bitorder="little"))


def _offsets(items: Sequence, dtype) -> pa.Buffer:
    return pa.py_buffer(np.concatenate([[0], np.cumsum([len(item) for item in items], dtype=dtype)]).astype(dtype))


def write_rows(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    pq.write_table(to_table(rows, columns), Path(path))


def column_names(path: Path) -> list[str]:
    return list(pq.read_schema(Path(path)).names)


def read_rows(path: Path, columns: Iterable[str] | None = None) -> list[dict]:
    """Every row as a dict (the columns named that the file has; all of them by default)."""
    return read_table(path, columns).to_pylist()


def read_table(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    """The file's table (the columns named that it has; all of them by default), through pq.ParquetFile: see the
    module's docstring."""
    with pq.ParquetFile(Path(path)) as parquet:
        if columns is not None:
            present = set(parquet.schema_arrow.names)
            columns = [c for c in columns if c in present]
        return parquet.read(columns=columns)


def numpy_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """Each column as a numpy array (to_numpy's)."""
    return {name: to_numpy(table.column(name)) for name in table.column_names}


NUMPY_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
               "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "float": np.float32,
               "double": np.float64}


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column as numpy: a number column as a view of its buffer (no copy for one chunk without nulls; a missing
    value as NaN, the column then float64, as a DataFrame has it), any other column as Python objects. Not
    pyarrow's to_numpy, which imports pandas (the module's docstring)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:  # an empty table's column (combine_chunks would go through pa.array)
            return np.zeros(0, NUMPY_TYPES.get(str(column.type), object))
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    dtype = NUMPY_TYPES.get(str(array.type))
    if dtype is None:
        return np.array(array.to_pylist() + [None], dtype=object)[:-1]  # (the None keeps lists as objects)
    buffers = array.buffers()
    if not len(array):
        return np.zeros(0, dtype)
    values = np.frombuffer(buffers[1], dtype=dtype, count=array.offset + len(array))[array.offset:]
    if not array.null_count:
        return values
    valid = np.unpackbits(np.frombuffer(buffers[0], np.uint8), count=array.offset + len(array),
                          bitorder="little")[array.offset:].astype(bool)
    return np.where(valid, values.astype(np.float64), np.nan)


def counts(values: Iterable) -> dict:
    """{value: how many}, most frequent first (what pandas' value_counts().to_dict() gave)."""
    found: dict = {}
    for value in values:
        found[value] = found.get(value, 0) + 1
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def markdown(rows: Sequence[dict], columns: Sequence[str], limit: int = 10) -> str:
    """The first `limit` rows as a Markdown table (the asset's preview in the UI); "(empty)" without rows."""
    if not rows:
        return "(empty)"

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(":---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows[:limit]]
    return "\n".join(lines)
