"""Which executor each job gets: an ingest batch's steps in its run's process unless ASR_EXECUTOR says otherwise
(a process per step cost a launched 1,000-row batch 17.8 s instead of 7.7 s), training and evaluation a process
per step by default."""

import dagster as dg
import pytest

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.definitions import INGEST_JOB, RETRAIN_JOB, build_definitions


def _executors(monkeypatch, tmp_path, value: str | None) -> tuple[str, str]:
    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    if value is None:
        monkeypatch.delenv("ASR_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("ASR_EXECUTOR", value)
    defs = build_definitions()
    return defs.resolve_job_def(INGEST_JOB).executor_def.name, defs.resolve_job_def(RETRAIN_JOB).executor_def.name


def test_ingest_runs_in_process_by_default_and_training_keeps_a_process_per_step(monkeypatch, tmp_path):
    ingest, retrain = _executors(monkeypatch, tmp_path, None)
    assert ingest == dg.in_process_executor.name
    assert retrain == dg.multi_or_in_process_executor.name  # launched: multiprocess; the CLI's own: in-process


@pytest.mark.parametrize("value", ["multiprocess", "in_process"])
def test_asr_executor_applies_to_every_job(monkeypatch, tmp_path, value):
    expected = {"multiprocess": dg.multiprocess_executor.name, "in_process": dg.in_process_executor.name}[value]
    assert _executors(monkeypatch, tmp_path, value) == (expected, expected)


def test_an_unknown_executor_is_refused_with_its_variable(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="ASR_EXECUTOR"):
        _executors(monkeypatch, tmp_path, "threads")
