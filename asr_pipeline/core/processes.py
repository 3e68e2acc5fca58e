"""Which process is which: whether a pid still names a running process, and what tells it from a later one given
the same pid (its start, the boot and pid namespace it lives in). Used by the staging directories (storage), the
work directories of trainings (work_dirs) and the reaping of killed commands' runs (defs/common/dead_runs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import psutil


def process_table() -> str | None:
    """Where a pid names one process: this boot of this machine and this pid namespace, as 8 hex digits (Linux;
    None where unknown). The host's own namespace has the same inode on every machine: the boot id tells them apart."""
    namespace = pid_namespace()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return None if namespace is None else hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:8]


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
