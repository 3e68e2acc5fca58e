"""Directories that are written under a temporary name and published with one rename.

A run killed half way leaves only a `*.tmp-*` directory behind, never a half-written asset that a later
run would read.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def staging_dir(final: Path) -> Path:
    """A fresh sibling of `final` to write into; publish() moves it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def publish(staged: Path, final: Path) -> Path:
    """Replace `final` by `staged` atomically (rename), then remove the old version."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
