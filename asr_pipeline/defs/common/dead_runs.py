"""Runs an `asr-pipeline` command executed in its own process (execute_in_process) whose process is gone: kill -9,
a power cut. No code server watches such a run, so it would stay 'started' for good, keep its concurrency slot
(blocking every later training in the asr_training pool) and make nightly_retraining wait for it. Marked failed,
their slots freed, by every CLI command and by the nightly tick.

Where the pid can be checked (this host, this pid namespace) the pid and the process's start decide. Elsewhere (another
container given this host name, this container before a restart, another host) the command's heartbeat does: a
thread of the command tags its runs with the time every HEARTBEAT_S, and a run whose heartbeat is older than
HEARTBEAT_STALE_S is gone."""

from __future__ import annotations

import socket
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import dagster as dg
import psutil

from asr_pipeline.core.heartbeat import beating
from asr_pipeline.core.processes import identity, process_alive, runs_as_recorded

# what identifies the process besides its pid (processes.identity): a later process given the same pid, after a
# reboot or in a restarted container (whose command often gets the pid its killed predecessor had), is not it
_IDENTITY_TAGS = {"boot_id": str, "pid_namespace": int, "start_ticks": int, "pid_started": float}
HEARTBEAT_TAG = "asr/heartbeat"  # seconds since the epoch, as text: the command was alive then
HEARTBEAT_S = 60.0
HEARTBEAT_STALE_S = 15 * 60.0  # fifteen missed beats (a busy instance database, clocks a little apart)
_ACTIVE = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def cli_run_tags(pid: int) -> dict[str, str]:
    """What the CLI tags its runs with: where to look for the process that runs them, and which process it is."""
    tags = {"asr/launcher": "cli", "asr/host": socket.gethostname(), "asr/pid": str(pid)}
    try:
        process = identity(pid)
    except psutil.Error:  # no such process (outside Linux): the pid alone
        return tags
    tags.update({f"asr/{key}": str(process[key]) for key in _IDENTITY_TAGS if key in process})
    tags[HEARTBEAT_TAG] = str(int(time.time()))
    return tags


@contextmanager
def heartbeat(instance: dg.DagsterInstance, mine: dict[str, str], every_s: float = HEARTBEAT_S,
              emit: Callable[[str], None] | None = None) -> Iterator[None]:
    """While the block runs, a thread tags the active runs made with the tags `mine` (cli_run_tags of this process)
    with the time every every_s: what tells a reaper that cannot check the pid (another container or host) that the
    command lives. Each beat also reaps dead CLI runs: a training waiting for the pool slot of a run killed in
    another container gets it once that run's heartbeat is stale, not only at the next command or nightly tick."""
    emit = emit or (lambda line: print(line, file=sys.stderr))
    ours = {key: mine[key] for key in ("asr/launcher", "asr/host", "asr/pid") if key in mine}
    identity = [f"asr/{key}" for key in _IDENTITY_TAGS]
    failures = []

    def beat():
        try:
            for run in instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE, tags=ours)):
                if all(run.tags.get(key) == mine.get(key) for key in identity):
                    instance.add_run_tags(run.run_id, {HEARTBEAT_TAG: str(int(time.time()))})
            failures.clear()
        except Exception as error:  # a locked or unreachable database: the next beat tries again
            failures.append(error)
            if len(failures) == 3:
                emit(f"asr-pipeline: the run heartbeat failed 3 times in a row ({error!r}); after "
                     f"{HEARTBEAT_STALE_S / 60:.0f} min without one, a reaper in another container or on another "
                     "host takes this command's runs for dead")
        try:
            reap_dead_cli_runs(instance, emit)
        except Exception as error:  # the same: the next beat, the next command or the nightly tick reaps
            emit(f"asr-pipeline: reaping the runs of killed commands failed ({error!r})")

    # a beat waiting on a locked database does not hold the command's exit up for long
    with beating(every_s, beat, "cli-run-heartbeat", exit_wait_s=10):
        yield


def _why_gone(run: dg.DagsterRun, pid: int, mine: dict) -> str | None:
    """Why the run's process is not running any more, or None while it may be. mine: this process's identity()."""
    recorded = {"pid": pid}
    for key, kind in _IDENTITY_TAGS.items():
        try:
            recorded[key] = kind(run.tags[f"asr/{key}"])
        except (KeyError, ValueError):
            pass
    if "start_ticks" not in recorded and "pid_started" not in recorded:  # a version that recorded the pid alone
        return None if process_alive(pid) else "is gone"
    if recorded.get("boot_id") and mine.get("boot_id") and recorded["boot_id"] != mine["boot_id"]:
        if _heartbeat(run) > psutil.boot_time():  # alive since this machine booted: another one with this host name
            return _silent_for(run)
        return "is gone: this machine restarted since"
    namespaces = (recorded.get("pid_namespace"), mine.get("pid_namespace"))
    if None not in namespaces and namespaces[0] != namespaces[1]:
        # another container with this host name (a pod's containers share it), or this container before a restart:
        # its pids mean nothing here
        return _silent_for(run)
    if runs_as_recorded(recorded):
        return None
    return "is gone" + (" (a later process has its pid)" if process_alive(pid) else "")


def _heartbeat(run: dg.DagsterRun) -> float:
    """When the run's command last said it lived (seconds since the epoch; 0 for versions without the heartbeat)."""
    try:
        return float(run.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return 0.0


def _silent_for(run: dg.DagsterRun) -> str | None:
    """For a run whose pid cannot be checked here: gone when its command's heartbeat is older than HEARTBEAT_STALE_S
    (the hosts' clocks are taken to agree within minutes). Runs of versions without the heartbeat are left."""
    if HEARTBEAT_TAG not in run.tags:
        return None
    silent = time.time() - _heartbeat(run)
    return f"sent no heartbeat for {silent / 60:.0f} min" if silent > HEARTBEAT_STALE_S else None


def reap_dead_cli_runs(instance: dg.DagsterInstance, emit: Callable[[str], None]) -> list[str]:
    """Mark failed the runs `asr-pipeline` commands started whose process is gone; returns their ids. On this host
    the process is checked; elsewhere its heartbeat decides."""
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=_ACTIVE,  # NOT_STARTED too: a command killed between making its run and starting it
        tags={"asr/launcher": "cli"}))
    reaped, mine = [], identity()
    for run in runs:
        if run.remote_job_origin is not None or "dagster/parent_run_id" in run.tags:
            # launched by the daemon or the UI, not by a CLI process: a re-execution of a CLI run inherits its
            # tags, the dead command's pid among them
            continue
        pid = int(run.tags.get("asr/pid", "0") or 0)
        if run.tags.get("asr/host") != socket.gethostname():
            gone = _silent_for(run)
        else:
            gone = _why_gone(run, pid, mine) if pid else None
        if gone is not None:
            now = instance.get_run_by_id(run.run_id)  # the list was read earlier: it may have ended since
            if now is None or now.status not in _ACTIVE:
                continue
            instance.report_run_failed(now, message=f"the asr-pipeline process (pid {pid}) running it {gone}")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            emit(f"marked run {run.run_id} failed: its process {pid} {gone}")
            reaped.append(run.run_id)
    return reaped
