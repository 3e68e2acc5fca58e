"""Training work directories ($ASR_HOME/work/finetuned_checkpoint/<fingerprint>/): who is using one, and removing
the ones no training will resume.

A work directory holds the Trainer's last two checkpoints, each the float32 weights and Adam's two moments: about
1.7 GB for whisper-base, 19 GB for large-v3-turbo. A finished training removes its own; a killed one leaves it for
its rerun, which resumes it when it has the same fingerprint (base model, features and settings). Once the data
changed (nightly: new batches landed), no rerun can have that fingerprint again, and without a sweep every training
killed before new data arrived would keep its gigabytes for good.

The owner record (OWNER) says which process trains in a directory, on which machine and on what data; the training
touches it while it runs (trainer_hooks.heartbeat_callback), so a live training's directory never looks idle.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Sequence

import psutil

from asr_pipeline.core.storage import directory_bytes, read_json, write_json

OWNER = "asr_work_owner.json"  # the process training in this directory: identity() and the data it trains on
HEARTBEAT_S = 60.0  # a live training touches its owner record at least this often (at each step or validation batch)
# a directory whose owner is on this machine and gone is left this long after its last change all the same: it
# covers a heartbeat missed while one long step runs
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


def identity(pid: int | None = None) -> dict:
    """This process (or pid) and the process table it lives in. On Linux the table is the boot (boot_id) and the pid
    namespace (containers that share a host name have their own), and the process's start is its clock-tick count
    since boot, which a change of the wall clock does not move; elsewhere psutil's start time."""
    pid = os.getpid() if pid is None else pid
    record = {"host": socket.gethostname(), "pid": pid}
    try:
        record["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        record["pid_namespace"] = os.stat("/proc/self/ns/pid").st_ino
        stat = Path(f"/proc/{pid}/stat").read_text()
        record["start_ticks"] = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        record["pid_started"] = psutil.Process(pid).create_time()
    return record


def claim(work_dir: Path, data: str) -> None:
    """Record this process as the one training in work_dir (made if missing) on `data` (data_fingerprint); a
    resumed training claims it again."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / OWNER, {**identity(), "data": data, "claimed_at": time.time()})


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
    idle = now - _newest_mtime(work_dir)
    table = _same_process_table(owner)
    if table == "same":
        if _alive(owner) or idle <= DEAD_OWNER_GRACE_S:
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
    if data is not None and owner is not None and owner.get("data") == data and idle <= RESUMABLE_KEEP_S:
        return None  # the same data: a rerun with the same settings resumes it
    return why


def remove_abandoned(root: Path, keep: Path, data: str | None = None,
                     emit: Callable[[str], None] = print) -> list[Path]:
    """Remove root's work directories other than `keep` (this training's own) that no training will use (see
    abandoned; `data` is this training's data_fingerprint); returns them. Each removal is reported with its size and
    reason; one that fails (permissions, a file in use elsewhere) is reported and left."""
    import shutil

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
             f"{reason}, and its data is not this training's")
    return removed


def _same_process_table(owner: dict | None) -> str:
    """'same': the owner's pid can be checked here; 'rebooted': this machine, booted since; 'other': not here."""
    if not owner or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return "other"
    mine = identity()
    if owner.get("pid_namespace", mine.get("pid_namespace")) != mine.get("pid_namespace"):
        return "other"  # another container with the same host name: its process ids are not ours
    if owner.get("boot_id", mine.get("boot_id")) != mine.get("boot_id"):
        return "rebooted"
    return "same"


def _alive(owner: dict) -> bool:
    """The owner's process still runs: its pid exists and started when the owner's did (a reused pid does not)."""
    try:
        process = psutil.Process(owner["pid"])
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        now = identity(owner["pid"])
    except (psutil.Error, OSError, ValueError):
        return False
    if "start_ticks" in owner and "start_ticks" in now:
        return owner["start_ticks"] == now["start_ticks"]
    started = owner.get("pid_started")
    return isinstance(started, (int, float)) and abs(process.create_time() - started) < 1.0


def touch(work_dir: Path) -> None:
    """The heartbeat: a live training's owner record changes at least every HEARTBEAT_S."""
    try:
        os.utime(Path(work_dir) / OWNER)
    except OSError:
        pass


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    for folder, _, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            try:
                newest = max(newest, os.stat(name).st_mtime)
            except OSError:
                continue
    return newest
