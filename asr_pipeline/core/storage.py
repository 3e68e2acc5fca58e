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
    """A fresh sibling of `final` to write into; publish() moves it into place.

    Its name carries our PID, so leftovers of killed runs (whose PID is gone) are recognised and removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    path = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def remove_stale_staging(final: Path) -> list[Path]:
    """Delete staging directories of `final` left by processes that no longer run."""
    removed = []
    for candidate in final.parent.glob(f".{final.name}.tmp-*"):
        pid = candidate.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    for candidate in final.parent.glob(f".{final.name}.old-*"):  # publish() died between its two renames
        if final.exists():
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
