"""Whether a pid still names a running process, and which one (asr_pipeline/core/processes.py): a process that
exists but cannot be inspected counts as running; os.kill is never asked on Windows."""

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from asr_pipeline.core import processes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")
def test_a_process_name_that_is_not_utf8_does_not_hide_its_start():
    """/proc/PID/stat holds the process's name as bytes; one cut inside a character must not make the start
    unreadable (a live writer would look like a later process, its staging directory deleted)."""
    rename = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'asr-\\xc3', 0, 0, 0); "  # PR_SET_NAME
              "print(flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", rename], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        assert b"(asr-\xc3)" in Path(f"/proc/{child.pid}/stat").read_bytes()
        assert processes.process_start_ticks(child.pid) is not None
    finally:
        child.kill()
        child.wait()


def test_a_process_that_exists_but_cannot_be_inspected_counts_as_running(monkeypatch):
    """Another user's process under /proc's hidepid (or /proc hidden from a sandboxed service): os.kill(pid, 0)
    answers EPERM and psutil cannot see it, or psutil is refused. Nothing says it is gone: a run or staging
    directory of it must not be taken for dead."""
    def refused(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    def invisible(self, pid):
        raise psutil.NoSuchProcess(pid)

    with monkeypatch.context() as hidden:  # hidepid=invisible: os.kill says EPERM, /proc has no entry
        hidden.setattr(os, "kill", refused)
        hidden.setattr(psutil, "pid_exists", lambda pid: False)
        hidden.setattr(psutil.Process, "__init__", invisible)
        hidden.setattr(processes, "process_start_ticks", lambda pid: None)  # no /proc entry to read
        assert processes.process_alive(4242)
        assert processes.runs_as_recorded({"pid": 4242, "start_ticks": 1})

    def denied(self):
        raise psutil.AccessDenied(4242)

    monkeypatch.setattr(processes, "_POSIX", False)  # Windows: psutil alone, refused
    monkeypatch.setattr(psutil, "pid_exists", lambda pid: True)
    monkeypatch.setattr(psutil.Process, "__init__", lambda self, pid: None)
    monkeypatch.setattr(psutil.Process, "status", denied)
    assert processes.process_alive(4242)


def test_process_checks_use_psutil_not_os_kill_on_windows(monkeypatch):
    """os.kill(pid, 0) terminates the process on Windows: there process_alive asks psutil alone (OpenProcess)."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert processes.process_alive(os.getpid()) and not processes.process_alive(int(finished.stdout))

    def forbidden(*_):
        raise AssertionError("os.kill called")

    monkeypatch.setattr(processes, "_POSIX", False)
    asked = []
    monkeypatch.setattr(psutil, "pid_exists", lambda pid: asked.append(pid) or pid == 4242)
    monkeypatch.setattr(psutil.Process, "status", lambda self: psutil.STATUS_RUNNING)
    monkeypatch.setattr(psutil.Process, "__init__", lambda self, pid: None)
    monkeypatch.setattr(os, "kill", forbidden)  # what Windows' psutil never calls either
    assert processes.process_alive(4242) and not processes.process_alive(4243)
    assert asked == [4242, 4243]
