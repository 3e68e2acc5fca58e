"""Runs an `asr-pipeline` command executed in its own process (execute_in_process) whose process is gone: kill -9,
a power cut. No code server watches such a run, so it would stay 'started' for good, keep its concurrency slot
(blocking every later training in the asr_training pool) and make nightly_retraining wait for it. Marked failed,
their slots freed, by every CLI command and by the nightly tick."""

from __future__ import annotations

import socket
from typing import Callable

import dagster as dg
import psutil

from asr_pipeline.core import work_dirs
from asr_pipeline.core.storage import process_alive

# what identifies the process besides its pid (work_dirs.identity): a later process given the same pid, after a
# reboot or in a restarted container (whose command often gets the pid its killed predecessor had), is not it
_IDENTITY_TAGS = {"boot_id": str, "pid_namespace": int, "start_ticks": int, "pid_started": float}


def cli_run_tags(pid: int) -> dict[str, str]:
    """What the CLI tags its runs with: where to look for the process that runs them, and which process it is."""
    tags = {"asr/launcher": "cli", "asr/host": socket.gethostname(), "asr/pid": str(pid)}
    try:
        process = work_dirs.identity(pid)
    except psutil.Error:  # no such process (outside Linux): the pid alone
        return tags
    tags.update({f"asr/{key}": str(process[key]) for key in _IDENTITY_TAGS if key in process})
    return tags


def _why_gone(run: dg.DagsterRun, pid: int) -> str | None:
    """Why the run's process is not running any more, or None while it may be."""
    recorded = {"pid": pid}
    for key, kind in _IDENTITY_TAGS.items():
        try:
            recorded[key] = kind(run.tags[f"asr/{key}"])
        except (KeyError, ValueError):
            pass
    if "start_ticks" not in recorded and "pid_started" not in recorded:  # a version that recorded the pid alone
        return None if process_alive(pid) else "is gone"
    mine = work_dirs.identity()
    if recorded.get("boot_id") and mine.get("boot_id") and recorded["boot_id"] != mine["boot_id"]:
        # (the host name, as before, is trusted to be this machine)
        return "is gone: this machine restarted since"
    namespaces = (recorded.get("pid_namespace"), mine.get("pid_namespace"))
    if None not in namespaces and namespaces[0] != namespaces[1]:
        # another container with this host name (host networking), or this container before a restart: its pids
        # mean nothing here, so it is left (terminate it in the UI if its process is gone)
        return None
    if work_dirs.runs_as_recorded(recorded):
        return None
    return "is gone" + (" (a later process has its pid)" if process_alive(pid) else "")


def reap_dead_cli_runs(instance: dg.DagsterInstance, emit: Callable[[str], None]) -> list[str]:
    """Mark failed the runs the CLI started on this host whose process is gone; returns their ids. A run from
    another host is left: its process cannot be checked from here."""
    runs = instance.get_runs(filters=dg.RunsFilter(
        # NOT_STARTED too: a command killed between making its run and starting it
        statuses=[dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
        tags={"asr/launcher": "cli", "asr/host": socket.gethostname()}))
    reaped = []
    for run in runs:
        if run.remote_job_origin is not None or "dagster/parent_run_id" in run.tags:
            # launched by the daemon or the UI, not by a CLI process: a re-execution of a CLI run inherits its
            # tags, the dead command's pid among them
            continue
        pid = int(run.tags.get("asr/pid", "0") or 0)
        gone = _why_gone(run, pid) if pid else None
        if gone is not None:
            instance.report_run_failed(run, message=f"the asr-pipeline process (pid {pid}) running it {gone}")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            emit(f"marked run {run.run_id} failed: its process {pid} {gone}")
            reaped.append(run.run_id)
    return reaped
