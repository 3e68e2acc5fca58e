"""Training work directories ($ASR_HOME/work/finetuned_checkpoint/<fingerprint>/): who is using one, and removing
the ones no training can resume.

A work directory holds the Trainer's last two checkpoints, each the float32 weights and Adam's two moments: about
1.7 GB for whisper-base, 19 GB for large-v3-turbo. A finished training removes its own; a killed one
leaves it for its rerun to resume from. But a rerun resumes only a directory of the same fingerprint (base model,
features and settings): once new batches land, the next training has another fingerprint, and the killed one's
checkpoints can never be used. Without a sweep, every training killed before new data arrived would keep its
gigabytes for good; nightly for a year, that fills a disk.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

import psutil

from asr_pipeline.core.storage import directory_bytes, read_json, write_json

OWNER = "asr_work_owner.json"  # {host, pid, pid_started, claimed_at}: the process training in this directory
# a directory this host cannot check (another host's, or one without an owner record) is abandoned once nothing in it
# has changed for this long: a live training writes its logs every few steps and a checkpoint every eval_steps
IDLE_LIMIT_S = 24 * 3600.0
# one whose owner process on this host is gone is left this long after its last change all the same: another
# container that shares the volume and the host name (and has its own process ids) may be training in it
DEAD_OWNER_GRACE_S = 600.0


def claim(work_dir: Path) -> None:
    """Record this process as the one training in work_dir (made if missing); a resumed training claims it again."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / OWNER, {"host": socket.gethostname(), "pid": os.getpid(),
                                  "pid_started": psutil.Process().create_time(), "claimed_at": time.time()})


def abandoned(work_dir: Path, now: float | None = None) -> str | None:
    """Why no live training uses work_dir, or None while one may. On this host: its owner's process is gone (the
    process's start time is compared too, so a reused pid does not keep it) and nothing changed in it for
    DEAD_OWNER_GRACE_S. Elsewhere, or with no owner record: nothing in it changed for IDLE_LIMIT_S."""
    work_dir = Path(work_dir)
    try:
        owner = read_json(work_dir / OWNER)
    except (OSError, ValueError):
        owner = None
    idle = (now or time.time()) - _newest_mtime(work_dir)
    if isinstance(owner, dict) and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if not _same_process_alive(owner["pid"], owner.get("pid_started")) and idle > DEAD_OWNER_GRACE_S:
            return f"its training process (pid {owner['pid']} on this host) is gone"
        return None
    if idle > IDLE_LIMIT_S:
        whose = f"of host {owner['host']}" if isinstance(owner, dict) and owner.get("host") else "with no owner record"
        return f"nothing in it changed for {idle / 3600:.0f} h ({whose})"
    return None


def remove_abandoned(root: Path, keep: Path, emit: Callable[[str], None] = print) -> list[Path]:
    """Remove root's work directories other than `keep` (this training's own, which it may resume) that no live
    training uses; returns them. Each removal is reported with its size and reason."""
    removed = []
    for candidate in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if not candidate.is_dir() or candidate.resolve() == Path(keep).resolve():
            continue
        reason = abandoned(candidate)
        if reason is None:
            continue
        try:
            size = directory_bytes(candidate)
        except OSError:  # a file went away while it was counted
            size = 0
        shutil.rmtree(candidate, ignore_errors=True)
        if not candidate.exists():
            (candidate.parent / f"{candidate.name}.job.json").unlink(missing_ok=True)  # torchrun's job (launcher)
            removed.append(candidate)
            emit(f"removed the work directory {candidate.name} of an abandoned training ({size / 2**30:.2f} GiB): "
                 f"{reason}; its checkpoints could only resume a training of other data or settings")
    return removed


def _same_process_alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    for folder, _, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            try:
                newest = max(newest, os.stat(name).st_mtime)
            except OSError:
                continue
    return newest

