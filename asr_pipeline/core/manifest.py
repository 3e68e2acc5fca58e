"""From database rows to a manifest: path rewriting and a split that is stable forever.

A row's split is a function of its own group key only (a hash), so it never moves when other rows arrive,
and every clip of one broadcast episode lands in the same split.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections import namedtuple
from pathlib import PurePosixPath
from typing import Iterable, Mapping

import numpy as np

from asr_pipeline.core.settings import DEFAULT_GROUP_PATTERN, PathMap, SplitRatios
from asr_pipeline.core.tables import is_missing
from asr_pipeline.core.text import clean

MANIFEST_COLUMNS = ["id", "source_path", "audio_path", "transcript", "group", "split"]
SPLITS = ("train", "valid", "test")


def group_key(row_id: object, source_path: str, pattern: str = DEFAULT_GROUP_PATTERN) -> str:
    """Episode id from the file name when it has the archive's shape, otherwise the row id."""
    stem = PurePosixPath(str(source_path).replace("\\", "/")).stem
    match = re.match(pattern, stem)
    if match and match.group("group"):
        return match.group("group")
    return f"{FALLBACK_GROUP_PREFIX}{row_id}"


def assign_split(key: str, ratios: SplitRatios) -> str:
    """Map a group key to train/valid/test with a stable hash (independent of PYTHONHASHSEED and row order)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    if fraction < ratios.train:
        return "train"
    if fraction < ratios.train + ratios.valid:
        return "valid"
    return "test"


# Bump when clean_transcript changes what it returns: every batch's labels change, so every batch becomes stale
# (asr_pipeline.core.versions) and `asr-pipeline backfill --stale` re-processes them.
LABEL_CLEANUP_VERSION = 1
FALLBACK_GROUP_PREFIX = "id:"
FALLBACK_WARNING_SHARE = 0.2  # above this share of rows grouped by row id, the split may leak episodes


def fallback_group_share(manifest) -> float:
    """Share of rows whose file name did not match the group pattern and were grouped by their row id alone: those
    rows are split one by one, so clips of one episode can land in train and test. manifest: manifest_rows' rows or
    build_manifest's DataFrame."""
    groups = [str(g) for g in manifest["group"]] if hasattr(manifest, "columns") else [r["group"] for r in manifest]
    if not groups:
        return 0.0
    return sum(g.startswith(FALLBACK_GROUP_PREFIX) for g in groups) / len(groups)


def clean_transcript(text: object) -> str:
    """NFC (NAS exports mix NFD Hangul jamo with precomposed syllables) and single spaces: text.clean, the one
    clean-up evaluation references go through too."""
    return clean("" if text is None else str(text))


HANGUL_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # control, format, the three kinds of space


def is_blank_transcript(text: str) -> bool:
    """Nothing visible: only spaces (Z*), control (Cc) and format (Cf) characters and the Hangul fillers (letters
    that draw nothing; a caption of a lone zero-width space is as empty as a blank one, and is quarantined as such).
    Private-use and unassigned characters (an emoji newer than Python's tables) are not blank."""
    return all(ch in HANGUL_FILLERS or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def build_manifest(
    rows: Iterable[Mapping[str, object]],
    path_map: PathMap,
    ratios: SplitRatios,
    pattern: str = DEFAULT_GROUP_PATTERN,
):
    """manifest_rows as a pandas DataFrame (MANIFEST_COLUMNS), for notebooks."""
    import pandas as pd  # not at the top: an ingest never imports pandas (asr_pipeline.core.tables)

    frame = pd.DataFrame.from_records(manifest_rows(rows, path_map, ratios, pattern), columns=MANIFEST_COLUMNS)
    return frame.astype({"id": "int64"})


def manifest_rows(
    rows: Iterable[Mapping[str, object]],
    path_map: PathMap,
    ratios: SplitRatios,
    pattern: str = DEFAULT_GROUP_PATTERN,
) -> list[dict]:
    """rows: mappings with keys id, audio_path, transcript (as read from the database). Returns one dict a row
    (MANIFEST_COLUMNS), ordered by id."""
    records = []
    for row in rows:
        source = str(row["audio_path"] or "")
        key = group_key(row["id"], source, pattern)
        records.append(
            {
                "id": int(row["id"]),
                "source_path": source,
                "audio_path": path_map.rewrite(source),
                "transcript": clean_transcript(row["transcript"]),
                "group": key,
                "split": assign_split(key, ratios),
            }
        )
    return sorted(records, key=lambda record: record["id"])  # stable, as the DataFrame's sort was


# ---------------------------------------------------------------- a manifest handed to resample_manifest

def manifest_records(manifest) -> tuple[list[str], list[tuple]]:
    """A manifest (manifest_rows' dicts, a pandas DataFrame, a pyarrow Table) as its column names and its rows as
    named tuples (row.id, row.audio_path, ...), audio_path and transcript as text or None: a notebook's DataFrame
    may hold pathlib or bytes paths and numbers as transcripts. The id stays as given (row_id judges it)."""
    import pyarrow as pa

    if isinstance(manifest, pa.Table):
        columns, records = manifest.column_names, manifest.to_pylist()
    elif hasattr(manifest, "to_dict"):  # a DataFrame
        columns, records = [str(c) for c in manifest.columns], manifest.to_dict("records")
    else:
        records = list(manifest)
        columns = list(records[0]) if records else list(MANIFEST_COLUMNS)
    row = namedtuple("ManifestRow", columns, rename=True)
    as_text = {"audio_path": _path_text, "transcript": _transcript_text}
    return columns, [row(*(as_text[c](record[c]) if c in as_text else record[c] for c in columns))
                     for record in records]


def row_id(value) -> int | None:
    """A manifest's id as an int; None when it is missing or not a whole number an int64 holds (that row is
    quarantined)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = int(value) if float(value).is_integer() else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and 0 <= number < 2**63 else None


def _path_text(path) -> str | None:
    if is_missing(path):
        return None
    if isinstance(path, bytes):
        return os.fsdecode(path)
    return os.fspath(path) if isinstance(path, os.PathLike) else str(path)


def _transcript_text(value) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # read_csv made a float column of digit captions (one was missing): 123, not 123.0
    return value if isinstance(value, str) else str(value)
