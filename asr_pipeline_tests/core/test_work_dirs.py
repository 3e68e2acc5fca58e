"""core/work_dirs.py: a training's work directory is claimed by its process, and the directories no live training
can resume are removed (a killed training's checkpoints, once new data gave the next training another fingerprint).
Real processes: a child that has exited is a gone owner; this test process is a live one."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from asr_pipeline.core import work_dirs


def _work_dir(root: Path, name: str, owner: dict | None, age_s: float) -> Path:
    """A work directory with a checkpoint's files, an owner record (or none), everything last changed age_s ago."""
    path = root / name
    (path / "checkpoint-8").mkdir(parents=True)
    (path / "checkpoint-8" / "optimizer.pt").write_bytes(b"\0" * 4096)
    if owner is not None:
        (path / work_dirs.OWNER).write_text(json.dumps(owner))
    then = time.time() - age_s
    for folder, _, files in os.walk(path):
        for item in [folder, *(os.path.join(folder, f) for f in files)]:
            os.utime(item, (then, then))
    return path


def _exited_process() -> dict:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return {"host": socket.gethostname(), "pid": child.pid, "pid_started": started}


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def test_only_directories_no_live_training_can_use_are_removed(tmp_path):
    hour = 3600.0
    current = tmp_path / "current-fingerprint"
    work_dirs.claim(current)
    dead = _exited_process()
    directories = {
        "killed_last_night": (_exited_process(), 20 * hour, True),       # its process is gone: removed
        "killed_a_minute_ago": (dead, 60.0, False),                      # gone, but in the grace period
        "training_now": (_this_process(), 30 * hour, False),             # a live owner keeps it, however quiet
        "reused_pid": ({**_this_process(), "pid_started": 1.0}, 2 * hour, True),  # the pid now names another process
        "other_host_quiet": ({"host": "gpu-node-7", "pid": 1, "pid_started": 1.0}, 25 * hour, True),
        "other_host_recent": ({"host": "gpu-node-7", "pid": 1, "pid_started": 1.0}, 2 * hour, False),
        "no_owner_old": (None, 48 * hour, True),                         # made before owner records existed
        "no_owner_recent": (None, 1 * hour, False),
    }
    for name, (owner, age, _) in directories.items():
        _work_dir(tmp_path, name, owner, age)
    (tmp_path / "killed_last_night.job.json").write_text("{}")  # a killed torchrun's job file goes with its folder
    (tmp_path / "notes.txt").write_text("not a work directory")
    _work_dir(tmp_path, "current-fingerprint-copy", dead, 20 * hour)
    messages = []

    removed = work_dirs.remove_abandoned(tmp_path, keep=tmp_path / "current-fingerprint-copy", emit=messages.append)

    expected = sorted(tmp_path / name for name, (_, _, gone) in directories.items() if gone)
    assert sorted(removed) == expected
    for name, (_, _, gone) in directories.items():
        assert (tmp_path / name).exists() is not gone, name
    assert current.is_dir() and (tmp_path / "current-fingerprint-copy").is_dir()  # live owner; the one kept
    assert not (tmp_path / "killed_last_night.job.json").exists() and (tmp_path / "notes.txt").exists()
    assert len(messages) == 4 and all("GiB" in m and "abandoned training" in m for m in messages)
    assert any("pid" in m and "is gone" in m for m in messages)
    assert any("no owner record" in m for m in messages) and any("host gpu-node-7" in m for m in messages)


def test_a_claim_records_this_process_and_a_resume_claims_again(tmp_path):
    work = tmp_path / "fingerprint"
    work_dirs.claim(work)
    owner = json.loads((work / work_dirs.OWNER).read_text())
    assert (owner["host"], owner["pid"]) == (socket.gethostname(), os.getpid())
    assert work_dirs.abandoned(work) is None
    (work / work_dirs.OWNER).write_text(json.dumps({**_exited_process()}))
    old = time.time() - 3600
    os.utime(work / work_dirs.OWNER, (old, old))
    os.utime(work, (old, old))
    assert "is gone" in work_dirs.abandoned(work)
    work_dirs.claim(work)  # the rerun of the same training takes it over
    assert work_dirs.abandoned(work) is None


def test_an_unreadable_owner_record_counts_as_none(tmp_path):
    work = _work_dir(tmp_path, "torn", None, 30 * 3600.0)
    (work / work_dirs.OWNER).write_text('{"host": "')  # written by hand, or by a tool that is not write_json
    old = time.time() - 30 * 3600.0
    for item in (work / work_dirs.OWNER, work):
        os.utime(item, (old, old))
    assert "no owner record" in work_dirs.abandoned(work)
