"""Runs an `asr-pipeline` command executed in its own process (execute_in_process) whose process is gone: kill -9,
a power cut. No code server watches such a run, so it would stay 'started' for good, keep its concurrency slot
(blocking every later training in the asr_training pool) and make nightly_retraining wait for it. Marked failed,
their slots freed, by every CLI command and by the nightly tick."""

from __future__ import annotations

import socket
from typing import Callable

import dagster as dg

from asr_pipeline.core.storage import process_alive

def cli_run_tags(pid: int) -> dict[str, str]:
    """What the CLI tags its runs with: where to look for the process that runs them."""
    return {"asr/launcher": "cli", "asr/host": socket.gethostname(), "asr/pid": str(pid)}


def reap_dead_cli_runs(instance: dg.DagsterInstance, emit: Callable[[str], None]) -> list[str]:
    """Mark failed the runs the CLI started on this host whose process is gone; returns their ids. A run from
    another host is left: its process cannot be checked from here."""
    runs = instance.get_runs(filters=dg.RunsFilter(
        # NOT_STARTED too: a command killed between making its run and starting it
        statuses=[dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
        tags={"asr/launcher": "cli", "asr/host": socket.gethostname()}))
    reaped = []
    for run in runs:
        pid = int(run.tags.get("asr/pid", "0") or 0)
        if pid and not process_alive(pid):
            instance.report_run_failed(run, message=f"the asr-pipeline process (pid {pid}) running it is gone")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            emit(f"marked run {run.run_id} failed: its process {pid} is gone")
            reaped.append(run.run_id)
    return reaped
