"""Which executor each job gets: an ingest batch's steps in its run's process unless ASR_EXECUTOR says otherwise
(a process per step cost a launched 1,000-row batch 17.8 s instead of 7.7 s); the jobs that train and evaluate,
and the UI's own materializations (the implicit asset job, which can train too), Dagster's default: a process per
step for a launched run."""

import dagster as dg
import pytest

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.definitions import EVALUATE_JOB, INGEST_JOB, RETRAIN_JOB, TRAIN_JOB, build_definitions

TRAINING_JOBS = (RETRAIN_JOB, TRAIN_JOB, EVALUATE_JOB)


def _executors(monkeypatch, tmp_path, value: str | None) -> dict[str, str]:
    """{job name: its executor's name}, with the implicit asset job (what the UI's "Materialize" launches) as 'ui'."""
    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    if value is None:
        monkeypatch.delenv("ASR_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("ASR_EXECUTOR", value)
    defs = build_definitions()
    names = {job: defs.resolve_job_def(job).executor_def.name for job in (INGEST_JOB, *TRAINING_JOBS)}
    names["ui"] = defs.resolve_implicit_global_asset_job_def().executor_def.name
    return names


def test_ingest_runs_in_process_by_default_and_training_keeps_a_process_per_step(monkeypatch, tmp_path):
    names = _executors(monkeypatch, tmp_path, None)
    assert names[INGEST_JOB] == dg.in_process_executor.name
    assert {names[job] for job in (*TRAINING_JOBS, "ui")} == {dg.multi_or_in_process_executor.name}


@pytest.mark.parametrize("value", ["multiprocess", "in_process", "k8s"])
def test_asr_executor_applies_to_every_job(monkeypatch, tmp_path, value):
    if value == "k8s":
        pytest.importorskip("dagster_k8s")
    names = _executors(monkeypatch, tmp_path, value)
    expected = {"multiprocess": dg.multiprocess_executor.name, "in_process": dg.in_process_executor.name,
                "k8s": "k8s"}[value]
    assert set(names.values()) == {expected}, names


def test_an_unknown_executor_is_refused_with_its_variable(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="ASR_EXECUTOR"):
        _executors(monkeypatch, tmp_path, "threads")
