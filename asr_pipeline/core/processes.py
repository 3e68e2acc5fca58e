"""Which process is which: whether a pid still names a running process, and what tells it from a later one given
the same pid (its start, the boot and pid namespace it lives in). Used by the staging directories (storage), the
work directories of trainings (work_dirs, which records identity() as their owner) and the reaping of killed
commands' runs (defs/common/dead_runs, which tags runs with it)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import psutil


def identity(pid: int | None = None) -> dict:
    """This process (or pid) and the process table it lives in. On Linux the table is the boot (boot_id) and the pid
    namespace (containers that share a host name have their own), and the process's start is its clock-tick count
    since boot, which a change of the wall clock does not move; elsewhere psutil's start time."""
    pid = os.getpid() if pid is None else pid
    record = {"host": socket.gethostname(), "pid": pid}
    boot, namespace, ticks = boot_id(), pid_namespace(), process_start_ticks(pid)
    if boot is not None:
        record["boot_id"] = boot
    if namespace is not None:
        record["pid_namespace"] = namespace
    if ticks is not None:
        record["start_ticks"] = ticks
    else:
        record["pid_started"] = psutil.Process(pid).create_time()
    return record


def runs_as_recorded(owner: dict) -> bool:
    """The process identity() recorded still runs: its pid exists and started when the recorded one did (a reused
    pid does not). Of this boot and process table: the caller compares those first. A process that exists but
    cannot be inspected (hidden /proc) cannot be told from the recorded one: it counts as running."""
    pid = owner["pid"]
    if not process_alive(pid):  # (a zombie included)
        return False
    if "start_ticks" in owner:
        now = process_start_ticks(pid)
        return now is None or now == owner["start_ticks"]  # unreadable now: cannot tell
    try:
        started = owner.get("pid_started")
        return isinstance(started, (int, float)) and abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.NoSuchProcess:  # gone since, or hidden from psutil (hidepid=invisible): the first check again
        return process_alive(pid)
    except (psutil.Error, OSError, ValueError):
        return True


def process_table() -> str | None:
    """Where a pid names one process: this boot of this machine and this pid namespace, as 8 hex digits (Linux;
    None where unknown). The host's own namespace has the same inode on every machine: the boot id tells them apart."""
    boot, namespace = boot_id(), pid_namespace()
    if boot is None or namespace is None:
        return None
    return hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:8]


def boot_id() -> str | None:
    """This boot of this machine (Linux), None where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process pid started, in clock ticks since boot (/proc/PID/stat's 22nd field; a change of the wall clock
    does not move it), or None (no such process, or not Linux): with the pid, what tells a process from a later one
    given the same pid after a reboot or in a restarted container. Bytes: a process's name need not be UTF-8."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_namespace() -> int | None:
    """This process's pid namespace (its inode; Linux), None where unknown: pids of another namespace (another
    container) mean nothing here."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


_POSIX = os.name == "posix"


def process_alive(pid: int) -> bool:
    """Whether process pid exists and is not a zombie. One that exists but cannot be inspected (another user's
    under /proc's hidepid, or /proc hidden from a sandboxed service) counts as running: nothing says it is not. On
    POSIX os.kill(pid, 0) asks first (it sends nothing, and answers EPERM for such a process); on Windows that call
    would terminate the process, so psutil alone."""
    if not 0 < pid < 2**32:  # (a name or tag edited by hand: no process has such a pid)
        return False
    if _POSIX:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError):
            return False
        except PermissionError:
            return True
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False
