"""What the event log tests share (asr_pipeline_tests/defs/common/test_event_log*.py): two assets, an instance the
way the CLI opens it, runs, another Python process on the same instance, and the dagster.yaml files of earlier
versions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from asr_pipeline.cli import runs

REPO = Path(__file__).resolve().parents[3]


@dg.asset
def counted(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"run": context.run.run_id})


@dg.asset
def slow(context) -> None:
    """Takes its time, logs half way through: a run the UI would be watching. (The pause before the log line keeps
    it clear of the run's first writes, which made its database.)"""
    seconds = float(os.environ.get("SLOW_ASSET_SECONDS", "0"))
    time.sleep(seconds / 10)
    context.log.info("halfway there")
    time.sleep(seconds)


def open_instance(home: Path, monkeypatch) -> dg.DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return runs._instance()


def materialize(instance, times: int = 1) -> list[str]:
    return [dg.materialize([counted], instance=instance).run_id for _ in range(times)]


def in_another_process(home: Path, code: str, **popen) -> subprocess.Popen:
    """`code` in a new Python process on the instance at home (this module importable as `tests`)."""
    prelude = ("import os, signal, sys, dagster as dg; from asr_pipeline.cli import runs;"
               "import asr_pipeline_tests.defs.common.event_log_runs as tests; instance = runs._instance();")
    return subprocess.Popen([sys.executable, "-c", prelude + code], cwd=REPO, text=True,
                            env={**os.environ, "DAGSTER_HOME": str(home), **popen.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def earlier_configs() -> list[str]:
    """The dagster.yaml files earlier versions wrote: before the event log entry, and with its first comment."""
    before = re.sub(r"event_log_storage:.*?env: DAGSTER_HOME\n", "", runs.INSTANCE_CONFIG, flags=re.S)
    first_comment = runs.INSTANCE_CONFIG.replace(
        "its files kept open (0.36 s of an ingest process)", "its files kept open between writes (0.3 s an ingest)")
    return [before, first_comment]


def artifacts_in(directory: Path) -> str:
    return ("local_artifact_storage:\n  module: dagster.core.storage.root\n  class: LocalArtifactStorage\n"
            f"  config:\n    base_dir: {directory}\n")
