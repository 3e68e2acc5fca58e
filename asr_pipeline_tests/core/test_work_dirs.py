"""core/work_dirs.py: a training's work directory is claimed by its process, and the directories no training will
use are removed (a killed training's checkpoints, once the data changed so that no rerun can resume them).
Real processes: a child that has exited is a gone owner; this test process is a live one."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asr_pipeline.core import work_dirs

HOUR = 3600.0
DATA, OTHER_DATA = "current-data", "last-weeks-data"


def _work_dir(root: Path, name: str, owner: dict | None, age_s: float) -> Path:
    """A work directory with a checkpoint's files, an owner record (or none), everything last changed age_s ago."""
    path = root / name
    (path / "checkpoint-8").mkdir(parents=True)
    (path / "checkpoint-8" / "optimizer.pt").write_bytes(b"\0" * 4096)
    if owner is not None:
        (path / work_dirs.OWNER).write_text(json.dumps(owner))
    _age(path, age_s)
    return path


def _age(path: Path, age_s: float) -> None:
    then = time.time() - age_s
    for folder, _, files in os.walk(path):
        for item in [folder, *(os.path.join(folder, f) for f in files)]:
            os.utime(item, (then, then))


def _exited_process(data: str = OTHER_DATA) -> dict:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    record = work_dirs.identity(child.pid)
    child.wait()
    return {**record, "data": data}


def _this_process(data: str = OTHER_DATA) -> dict:
    return {**work_dirs.identity(), "data": data}


def test_only_directories_no_training_will_use_are_removed(tmp_path):
    directories = {
        # name: (owner, age, removed?)
        "killed_last_night": (_exited_process(), 20 * HOUR, True),          # gone, other data: removed
        "killed_last_night_same_data": (_exited_process(DATA), 20 * HOUR, False),  # a rerun may resume it
        "killed_last_month_same_data": (_exited_process(DATA), 30 * 24 * HOUR, True),
        "killed_a_minute_ago": (_exited_process(), 60.0, False),            # gone, but in the grace period
        "training_now": (_this_process(), 30 * HOUR, False),                # a live owner keeps it, however quiet
        "reused_pid": ({**_this_process(), "start_ticks": -1, "pid_started": 1.0}, 2 * HOUR, True),
        "other_host_quiet": ({"host": "gpu-node-7", "pid": 1, "data": OTHER_DATA}, 25 * HOUR, True),
        "other_host_recent": ({"host": "gpu-node-7", "pid": 1, "data": OTHER_DATA}, 2 * HOUR, False),
        "no_owner_old": (None, 48 * HOUR, True),                            # made before owner records existed
        "no_owner_recent": (None, 1 * HOUR, False),
    }
    for name, (owner, age, _) in directories.items():
        _work_dir(tmp_path, name, owner, age)
    (tmp_path / "killed_last_night.job.json").write_text("{}")  # a killed torchrun's job file goes with its folder
    (tmp_path / "notes.txt").write_text("not a work directory")
    _work_dir(tmp_path, "this_training", _exited_process(), 20 * HOUR)
    messages = []

    removed = work_dirs.remove_abandoned(tmp_path, keep=tmp_path / "this_training", data=DATA, emit=messages.append)

    assert sorted(removed) == sorted(tmp_path / name for name, (_, _, gone) in directories.items() if gone)
    for name, (_, _, gone) in directories.items():
        assert (tmp_path / name).exists() is not gone, name
    assert (tmp_path / "this_training").is_dir()  # the one this training resumes, whoever claimed it before
    assert not (tmp_path / "killed_last_night.job.json").exists() and (tmp_path / "notes.txt").exists()
    assert len(messages) == len(removed) and all("GiB" in m and "abandoned training" in m for m in messages)
    assert any("pid" in m and "is gone" in m for m in messages)
    assert any("no owner record" in m for m in messages) and any("host gpu-node-7" in m for m in messages)


def test_another_container_or_machine_with_this_host_name_and_a_reboot(tmp_path):
    """A container with the same host name has its own process ids, and another machine with it has another boot
    id: their directories are judged by idleness, as another host's. A directory of this machine untouched since it
    rebooted had its owner end with the boot."""
    import psutil

    other_container = {**_this_process(), "pid_namespace": -1}
    quiet = _work_dir(tmp_path, "other_container", other_container, 2 * HOUR)
    assert work_dirs.abandoned(quiet) is None  # its live-looking pid means nothing here, and 2 h is not idle enough
    _age(quiet, 25 * HOUR)
    assert "changed for 25 h" in work_dirs.abandoned(quiet)
    other_boot = {**_this_process(), "boot_id": "another-boot"}
    since_boot = time.time() - psutil.boot_time()
    other_machine = _work_dir(tmp_path, "other_machine", other_boot, min(since_boot / 2, HOUR))  # changed since
    assert work_dirs.abandoned(other_machine) is None  # since our boot: not ours to judge before 24 h
    before_reboot = _work_dir(tmp_path, "before_reboot", other_boot, since_boot + 11 * 60)
    assert "reboot" in work_dirs.abandoned(before_reboot)


@pytest.mark.parametrize("owner, data, limit_s", [
    ("gone", OTHER_DATA, work_dirs.DEAD_OWNER_GRACE_S),   # this machine, the owner gone: 10 minutes
    ("elsewhere", OTHER_DATA, work_dirs.IDLE_LIMIT_S),    # another host: 24 hours
    ("gone", DATA, work_dirs.RESUMABLE_KEEP_S),           # the same data: 7 days, wherever it was
    ("elsewhere", DATA, work_dirs.RESUMABLE_KEEP_S),
])
def test_each_limit_holds_on_both_sides(tmp_path, owner, data, limit_s):
    record = _exited_process(data) if owner == "gone" else {"host": "gpu-node-7", "pid": 1, "data": data}
    work = _work_dir(tmp_path, "work", record, limit_s - 60)
    assert work_dirs.abandoned(work, data=DATA) is None
    _age(work, limit_s + 60)
    assert work_dirs.abandoned(work, data=DATA) is not None


def test_a_claim_records_this_process_and_its_heartbeat_keeps_a_quiet_training(tmp_path):
    import threading

    work = tmp_path / "fingerprint"
    with work_dirs.claimed(work, DATA, every_s=0.05):
        owner = json.loads((work / work_dirs.OWNER).read_text())
        assert (owner["host"], owner["pid"], owner["data"]) == (socket.gethostname(), os.getpid(), DATA)
        _age(work, HOUR)  # a long step, a long validation: the training itself writes nothing
        time.sleep(0.3)
        assert time.time() - (work / work_dirs.OWNER).stat().st_mtime < 5  # the heartbeat touched it
        assert work_dirs.abandoned(work) is None
    assert "work-dir-heartbeat" not in [t.name for t in threading.enumerate()]  # it ends with the training
    (work / work_dirs.OWNER).write_text(json.dumps(_exited_process()))  # the training was killed an hour ago
    _age(work, HOUR)
    assert "is gone" in work_dirs.abandoned(work)
    work_dirs.claim(work, DATA)  # the rerun of the same training takes it over
    _age(work, HOUR)
    assert work_dirs.abandoned(work) is None


@pytest.mark.parametrize("content", ['{"host": "', "[1, 2]", ""])
def test_an_unreadable_owner_record_counts_as_none(tmp_path, content):
    work = _work_dir(tmp_path, "torn", None, 30 * HOUR)
    (work / work_dirs.OWNER).write_text(content)  # written by hand, or by a tool that is not write_json
    _age(work, 30 * HOUR)
    assert "no owner record" in work_dirs.abandoned(work, data=DATA)
