"""Which runs of `asr-pipeline` commands the reaper marks failed: those whose process is gone, including when a later
process has been given its pid (after a reboot, or in a restarted container whose command often gets the pid its
killed predecessor had), and never one whose process still runs."""

import os
import subprocess
import sys
import time
import uuid

import dagster as dg
import psutil
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from asr_pipeline.core import processes
from asr_pipeline.defs.common import dead_runs
from asr_pipeline.defs.common.dead_runs import cli_run_tags, reap_dead_cli_runs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="boot id and clock ticks: Linux")


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _started(instance, tags) -> str:
    run = DagsterRun(job_name="asr_train", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.add_run(run)
    return run.run_id


def test_the_tags_say_which_process_runs_it():
    tags = cli_run_tags(os.getpid())
    assert tags["asr/pid"] == str(os.getpid())
    assert open("/proc/sys/kernel/random/boot_id").read().strip() == tags["asr/boot_id"]
    assert int(tags["asr/start_ticks"]) > 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert "asr/start_ticks" not in cli_run_tags(int(gone.stdout))  # nothing to record: the pid alone


def test_a_run_whose_pid_a_later_process_has_is_reaped_and_a_running_one_is_not(instance):
    mine = cli_run_tags(os.getpid())
    running = _started(instance, mine)
    pid_reused = _started(instance, {**mine, "asr/start_ticks": str(int(mine["asr/start_ticks"]) - 100)})
    before_reboot = _started(instance, {**mine, "asr/boot_id": str(uuid.uuid4()),
                                        dead_runs.HEARTBEAT_TAG: str(int(psutil.boot_time()) - 60)})
    older_version = _started(instance, {k: v for k, v in mine.items() if k in ("asr/launcher", "asr/host", "asr/pid")})
    lines = []
    reaped = reap_dead_cli_runs(instance, lines.append)
    assert sorted(reaped) == sorted([pid_reused, before_reboot])
    assert sorted(lines) == sorted([
        f"marked run {pid_reused} failed: its process {os.getpid()} is gone (a later process has its pid)",
        f"marked run {before_reboot} failed: its process {os.getpid()} is gone: this machine restarted since"])
    for run_id in (running, older_version):  # tagged by a version that recorded the pid alone: the pid decides
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    for run_id in reaped:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE


def test_what_cannot_be_read_now_never_makes_a_running_process_look_gone(instance, monkeypatch):
    """/proc can be partly hidden from one process and not another (a sandboxed service, ProcSubset=pid): a boot id
    or a start that cannot be read now cannot tell, and the run stays."""
    running = _started(instance, cli_run_tags(os.getpid()))
    monkeypatch.setattr(dead_runs, "identity", lambda pid=None: {"host": "h", "pid": pid or os.getpid()})
    monkeypatch.setattr(processes, "process_start_ticks", lambda pid: None)
    assert reap_dead_cli_runs(instance, lambda line: None) == []
    assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED


def test_where_clock_ticks_are_unknown_the_start_time_tells_processes_apart(instance, monkeypatch):
    """Outside Linux identity() records psutil's start time (seconds since the epoch, tagged as text)."""
    monkeypatch.setattr(processes, "process_start_ticks", lambda pid: None)
    mine = cli_run_tags(os.getpid())
    assert "asr/start_ticks" not in mine and float(mine["asr/pid_started"]) > 0
    running = _started(instance, mine)
    pid_reused = _started(instance, {**mine, "asr/pid_started": str(float(mine["asr/pid_started"]) - 60)})
    assert reap_dead_cli_runs(instance, lambda line: None) == [pid_reused]
    assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED


def test_a_re_execution_of_a_cli_run_is_not_taken_for_the_cli_process(instance):
    """A re-execution launched from the UI inherits the CLI run's tags, the dead command's pid among them."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    retried = _started(instance, {**cli_run_tags(int(gone.stdout)), "dagster/parent_run_id": str(uuid.uuid4())})
    assert reap_dead_cli_runs(instance, lambda line: None) == []
    assert instance.get_run_by_id(retried).status == dg.DagsterRunStatus.STARTED


def test_a_run_whose_process_is_gone_is_reaped(instance):
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    run_id = _started(instance, cli_run_tags(gone.pid))  # recorded while it ran
    assert reap_dead_cli_runs(instance, lambda line: None) == []
    gone.kill()
    gone.wait()
    lines = []
    assert reap_dead_cli_runs(instance, lines.append) == [run_id]
    assert lines == [f"marked run {run_id} failed: its process {gone.pid} is gone"]


def test_where_the_pid_cannot_be_checked_the_commands_heartbeat_decides(instance):
    """Another container given this host name (a pod's containers share it; or this container before a restart) and
    another host run their commands under pids that mean nothing here: a run of theirs is gone once its command's
    heartbeat is HEARTBEAT_STALE_S old, never because no process here has its pid."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tags = {**cli_run_tags(os.getpid()), "asr/pid": gone.stdout.strip()}
    stale = {dead_runs.HEARTBEAT_TAG: str(int(time.time() - dead_runs.HEARTBEAT_STALE_S - 60))}
    here = _started(instance, tags)  # this namespace: the pid is checked, and is gone
    other_namespace = {**tags, "asr/pid_namespace": str(int(tags["asr/pid_namespace"]) + 1)}
    other_host = {**tags, "asr/host": "another-host"}
    alive_elsewhere = [_started(instance, other_namespace), _started(instance, other_host)]
    silent = [_started(instance, {**other_namespace, **stale}), _started(instance, {**other_host, **stale})]
    no_heartbeat = _started(instance, {k: v for k, v in other_host.items() if k != dead_runs.HEARTBEAT_TAG})
    lines = []
    assert sorted(reap_dead_cli_runs(instance, lines.append)) == sorted([here, *silent])
    assert sum("sent no heartbeat for 16 min" in line for line in lines) == 2
    for run_id in (*alive_elsewhere, no_heartbeat):  # (a version without the heartbeat: left, as before)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED


def test_a_command_beats_on_its_own_active_runs_only_and_reaps_as_it_beats(instance):
    mine, other = cli_run_tags(os.getpid()), cli_run_tags(os.getppid())
    long_ago = {dead_runs.HEARTBEAT_TAG: "1000"}
    running, finished = _started(instance, {**mine, **long_ago}), _started(instance, {**mine, **long_ago})
    instance.report_run_failed(instance.get_run_by_id(finished))
    someone_elses = _started(instance, {**other, **long_ago})
    # an earlier process given this pid (this namespace: its run is reaped by the beat, not beaten alive)
    pid_reused = _started(instance, {**mine, **long_ago, "asr/start_ticks": "1"})
    lines = []
    with dead_runs.heartbeat(instance, mine, every_s=0.05, emit=lines.append):
        deadline = time.time() + 10
        while instance.get_run_by_id(running).tags[dead_runs.HEARTBEAT_TAG] == "1000" and time.time() < deadline:
            time.sleep(0.05)
    assert float(instance.get_run_by_id(running).tags[dead_runs.HEARTBEAT_TAG]) > time.time() - 60
    assert instance.get_run_by_id(finished).tags[dead_runs.HEARTBEAT_TAG] == "1000"
    assert instance.get_run_by_id(someone_elses).tags[dead_runs.HEARTBEAT_TAG] == "1000"
    reused = instance.get_run_by_id(pid_reused)
    assert reused.tags[dead_runs.HEARTBEAT_TAG] == "1000" and reused.status == dg.DagsterRunStatus.FAILURE
    assert lines == [f"marked run {pid_reused} failed: its process {os.getpid()} is gone (a later process has its pid)"]
    assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED


def test_a_run_of_another_machine_with_this_host_name_alive_since_this_boot_is_judged_by_its_heartbeat(instance):
    mine = cli_run_tags(os.getpid())
    other_boot = {**mine, "asr/boot_id": str(uuid.uuid4())}
    alive_there = _started(instance, other_boot)  # its heartbeat: now, after this machine booted
    before_the_reboot = _started(instance, {**other_boot, dead_runs.HEARTBEAT_TAG: str(int(psutil.boot_time()) - 60)})
    assert reap_dead_cli_runs(instance, lambda line: None) == [before_the_reboot]
    assert instance.get_run_by_id(alive_there).status == dg.DagsterRunStatus.STARTED


def test_a_heartbeat_that_keeps_failing_says_so(instance, monkeypatch):
    def locked(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(instance, "get_runs", locked)
    lines = []
    with dead_runs.heartbeat(instance, cli_run_tags(os.getpid()), every_s=0.02, emit=lines.append):
        deadline = time.time() + 10
        while not any("heartbeat failed" in line for line in lines) and time.time() < deadline:
            time.sleep(0.02)
    said = [line for line in lines if "heartbeat failed" in line]
    assert len(said) == 1 and "the run heartbeat failed 3 times in a row" in said[0]
    assert "reaping the runs of killed commands failed (RuntimeError('database is locked'))" in lines[0]
