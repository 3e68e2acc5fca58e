"""Training work directories ($ASR_HOME/work/finetuned_checkpoint/<fingerprint>/): who is using one, and removing
the ones no training will resume.

A work directory holds the Trainer's last two checkpoints, each the float32 weights and Adam's two moments: about
1.7 GB for whisper-base, 19 GB for large-v3-turbo. A finished training removes its own; a killed one leaves it for
its rerun, which resumes it when it has the same fingerprint (base model, features and settings). Once the data
changed (nightly: new batches landed), no rerun can have that fingerprint again, and without a sweep every training
killed before new data arrived would keep its gigabytes for good.

The owner record (OWNER) says which process trains in a directory, on which machine and on what data; while the
training runs (`with claimed(...)`), a thread of the owning process touches it every HEARTBEAT_S, from the model's
loading to the last save, so a live training's directory does not look idle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import psutil

from asr_pipeline.core.heartbeat import beating
from asr_pipeline.core.processes import identity, runs_as_recorded
from asr_pipeline.core.storage import directory_bytes, newest_mtime, read_json, write_json

OWNER = "asr_work_owner.json"  # the process training in this directory: identity() and the data it trains on
HEARTBEAT_S = 60.0  # how often the owning process touches its owner record while it trains (claimed())
# a directory whose owner process is gone is left this long after its last change all the same: the training's
# subprocesses (torchrun's ranks) may still be writing for a moment
DEAD_OWNER_GRACE_S = 600.0
# a directory this machine cannot check (another host's or container's, or one without an owner record) is left
# until nothing in it changed for this long
IDLE_LIMIT_S = 24 * 3600.0
# a dead training's directory of the current data may be resumed by a rerun with the same settings: it is kept
# this long (nightly retraining with new data makes it useless sooner, and then it goes)
RESUMABLE_KEEP_S = 7 * 24 * 3600.0


def data_fingerprint(base_source: str, shard_metas: Sequence[dict]) -> str:
    """What a training trains on, without its settings: a rerun of other data can never resume this directory."""
    payload = json.dumps([base_source, list(shard_metas)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def claim(work_dir: Path, data: str) -> None:
    """Record this process as the one training in work_dir (made if missing) on `data` (data_fingerprint); a
    resumed training claims it again."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / OWNER, {**identity(), "data": data, "claimed_at": time.time()})


@contextmanager
def claimed(work_dir: Path, data: str, every_s: float | None = None) -> Iterator[None]:
    """claim(), then touch the owner record every HEARTBEAT_S (every_s) until the block ends: a training that
    loads a large model, runs one long step or validates for an hour still shows it is alive."""
    claim(work_dir, data)
    with beating(HEARTBEAT_S if every_s is None else every_s, lambda: touch(work_dir), "work-dir-heartbeat"):
        yield


def abandoned(work_dir: Path, data: str | None = None, now: float | None = None) -> str | None:
    """Why no training will use work_dir, or None while one is or may. `data`: the data of the training asking (its
    rerun could resume a directory of the same data); None: any directory no live training uses counts."""
    work_dir = Path(work_dir)
    now = time.time() if now is None else now
    try:
        owner = read_json(work_dir / OWNER)
        owner = owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        owner = None
    newest = newest_mtime(work_dir)
    if newest is None:
        return None  # nothing in it could be read: not this process's to judge
    idle = now - newest
    table = _same_process_table(owner, newest)
    if table == "same":
        if runs_as_recorded(owner) or idle <= DEAD_OWNER_GRACE_S:
            return None
        why = f"its training process (pid {owner['pid']} on this machine) is gone"
    elif table == "rebooted":
        if idle <= DEAD_OWNER_GRACE_S:
            return None
        why = "its training process ended with a reboot of this machine"
    else:
        if idle <= IDLE_LIMIT_S:
            return None
        whose = f"of host {owner['host']}" if owner and owner.get("host") else "with no owner record"
        why = f"nothing in it changed for {idle / 3600:.0f} h ({whose})"
    if data is not None and owner is not None and owner.get("data") == data:
        if idle <= RESUMABLE_KEEP_S:
            return None  # the same data: a rerun with the same settings resumes it
        return f"{why}; it is of this training's data but unchanged for {idle / 86400:.0f} days"
    if data is not None:
        return f"{why}; it is of other data than this training's, so no rerun can resume it"
    return why


def remove_abandoned(root: Path, keep: Path, data: str | None = None,
                     emit: Callable[[str], None] = print) -> list[Path]:
    """Remove root's work directories other than `keep` (this training's own) that no training will use (see
    abandoned; `data` is this training's data_fingerprint); returns them. Each removal is reported with its size and
    reason; one that fails (permissions, a file in use elsewhere) is reported and left."""
    removed = []
    try:
        candidates = sorted(p for p in Path(root).iterdir() if p.is_dir())
    except OSError:
        return []
    for candidate in candidates:
        if candidate.resolve() == Path(keep).resolve():
            continue
        reason = abandoned(candidate, data)
        if reason is None:
            continue
        try:
            size = directory_bytes(candidate)
        except OSError:  # a file went away while it was counted
            size = 0
        shutil.rmtree(candidate, ignore_errors=True)
        if os.path.lexists(candidate):
            emit(f"could not remove the work directory {candidate} of an abandoned training ({reason}); "
                 "remove it by hand")
            continue
        (candidate.parent / f"{candidate.name}.job.json").unlink(missing_ok=True)  # torchrun's job (launcher)
        removed.append(candidate)
        emit(f"removed the work directory {candidate.name} of an abandoned training ({size / 2**30:.2f} GiB): "
             f"{reason}")
    return removed


def _same_process_table(owner: dict | None, newest: float) -> str:
    """'same': the owner's pid can be checked here; 'rebooted': this machine, booted since the directory last
    changed; 'other': not here (another host, or a machine or container with the same host name)."""
    if not owner or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return "other"
    mine = identity()
    if owner.get("boot_id") and mine.get("boot_id") and owner["boot_id"] != mine["boot_id"]:
        # another boot id: this machine rebooted, or another machine with the same host name (its host pid
        # namespace has the same inode as ours). Only a directory untouched since our boot is surely ours
        return "rebooted" if newest < psutil.boot_time() else "other"
    if owner.get("pid_namespace", mine.get("pid_namespace")) != mine.get("pid_namespace"):
        return "other"  # another container with the same host name: its process ids are not ours
    return "same"


def touch(work_dir: Path) -> None:
    """The heartbeat (claimed()): the owner record of a live training changes every HEARTBEAT_S."""
    try:
        os.utime(Path(work_dir) / OWNER)
    except OSError:
        pass
