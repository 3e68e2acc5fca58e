"""Fault injection: the database vanishing mid-read, and kill -9 during featurization and during training.

Each interrupted run is re-run and compared with an uninterrupted one: nothing lost, nothing half-written read.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from safetensors.numpy import load_file

from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.defs.alerts.sources import run_failure
from asr_pipeline.defs.ingest.run_failures import why_it_failed

pytestmark = [pytest.mark.mysql, pytest.mark.slow]


class FlakyProxy:
    """A TCP proxy in front of the real MariaDB that can drop every connection and refuse new ones for a while."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = _free_port()
        self.connections: list[socket.socket] = []
        self.listener = None
        self.start()

    def start(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def outage(self, seconds: float):
        """Drop everything now; accept connections again after `seconds`."""
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone may not
        self.listener.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self.connections = []
        threading.Timer(seconds, self.start).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_that_goes_away_mid_ingest_loses_no_rows(mysql_database):
    url = sa.make_url(mysql_database)
    TranscriptTable(mysql_database).insert_rows(
        [{"audio_path": f"/cul_m01/{i}.wav", "transcript": f"{i}번 문장"} for i in range(1, 101)])
    proxy = FlakyProxy(url.host, url.port or 3306)
    table = TranscriptTable(url.set(host="127.0.0.1", port=proxy.port), retries=4, backoff_s=0.5)
    rows = table.read_rows(page_size=10)
    seen = [next(rows)["id"] for _ in range(15)]  # into the second page
    proxy.outage(1.5)
    started = time.monotonic()
    seen += [r["id"] for r in rows]
    assert time.monotonic() - started >= 1.0  # it really waited for the server to come back
    assert seen == list(range(1, 101))
    table.dispose()


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "asr_pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def _kill_when(args, condition, timeout=120):
    """Start the CLI, SIGKILL it the moment condition() holds; returns True if it was killed in time."""
    process = subprocess.Popen([sys.executable, "-m", "asr_pipeline.cli", *args], env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if condition():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if process.poll() is None:
            process.kill()


def test_kill_during_featurization_then_rerun_equals_an_uninterrupted_run(pipeline_env, monkeypatch, tmp_path):
    storage = pipeline_env / "storage"

    def staged():
        return list((storage / "featurized_shards").glob(".ids-*.tmp-*"))

    def featurizing():
        return any((p / "features.f16").exists() and (p / "features.f16").stat().st_size > 0 for p in staged())

    assert _kill_when(["ingest"], featurizing), "the run finished before it could be killed"
    assert not list((storage / "featurized_shards").glob("ids-*"))  # nothing half-written was published
    assert staged()  # the killed run's staging directory is there...
    rerun = _cli("ingest")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(retry)" in rerun.stdout  # the killed run is marked failed and its batch picked up again
    assert not staged()  # ...and the re-run removed the leftover
    # an alert about the killed run names the step its process died in, not "failed before any step did"
    with dg.DagsterInstance.get() as instance:
        [killed] = instance.get_runs(filters=dg.RunsFilter(job_name="asr_ingest",
                                                           statuses=[dg.DagsterRunStatus.FAILURE]))
        failure = run_failure(instance, killed.run_id)
        assert failure.asset == "featurized_shards"
        assert failure.error.startswith(
            "the run's process died during featurized_shards: the asr-pipeline process (pid ")
        assert why_it_failed(instance, killed.run_id) == ("failed", failure.error)  # what `status` says of it

    monkeypatch.setenv("ASR_HOME", str(tmp_path / "uninterrupted"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "uninterrupted_dagster"))
    clean = _cli("ingest")
    assert clean.returncode == 0, clean.stderr[-3000:]
    [published] = sorted((storage / "featurized_shards").glob("ids-*"))
    reference = tmp_path / "uninterrupted" / "storage" / "featurized_shards" / published.name
    assert (published / "features.f16").read_bytes() == (reference / "features.f16").read_bytes()
    columns = ["id", "split", "offset", "num_frames", "pad_value", "label_length"]
    pd.testing.assert_frame_equal(pd.read_parquet(published / "index.parquet")[columns],
                                  pd.read_parquet(reference / "index.parquet")[columns])


def test_a_launched_run_killed_mid_step_is_reported_with_the_step_and_the_signal(pipeline_env):
    """A launched ingest run (`ingest-batch`, as the daemon executes one) SIGKILLed while featurizing: its steps run
    in its own process, so no step failure is recorded. The code server then records what it records for a dead run
    process (the two calls of dagster's _check_for_orphaned_runs, replayed with the real exit code); the batch's
    status and the alert must name the step and the signal, not say that no step ran."""
    from dagster._utils import get_run_crash_explanation

    first = _cli("ingest")
    assert first.returncode == 0, first.stderr[-3000:]
    storage = pipeline_env / "storage" / "featurized_shards"
    [key] = [p.name for p in storage.glob("ids-*")]

    def featurizing():
        return any((p / "features.f16").exists() for p in storage.glob(f".{key}.tmp-*"))

    process = subprocess.Popen([sys.executable, "-m", "asr_pipeline.cli", "ingest-batch", key],
                               env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and not featurizing() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(filters=dg.RunsFilter(job_name="asr_ingest",
                                                        statuses=[dg.DagsterRunStatus.STARTED]))
        instance.report_engine_event(get_run_crash_explanation(prefix=f"Run execution process for {run.run_id}",
                                                               exit_code=process.returncode), run)
        instance.report_run_failed(run)
        state, reason = why_it_failed(instance, run.run_id)
        assert state == "failed"
        assert reason.startswith(f"the run's process died during featurized_shards: Run execution process for "
                                 f"{run.run_id} was terminated by signal 9 (SIGKILL). This usually indicates that the "
                                 "process was killed by the operating system due to running out of memory.")
        assert reason.endswith(".") and len(reason) <= len("the run's process died during featurized_shards: ") + 300
        failure = run_failure(instance, run.run_id)
        assert (failure.asset, failure.error) == ("featurized_shards", reason)  # the alert says the same


def _first_checkpoint_written(work: Path) -> bool:
    """complete: the trainer's on_save marked it (trainer_hooks.CHECKPOINT_COMPLETE)"""
    return any((c / "asr_checkpoint_complete.json").exists() for c in work.glob("*/checkpoint-8"))


def test_kill_during_training_resumes_from_the_last_checkpoint(pipeline_env, monkeypatch, tmp_path):
    assert _cli("ingest").returncode == 0
    train = ["train", "--max-steps", "24", "--batch-size", "4", "--eval-steps", "8", "--warmup-steps", "2"]
    work = pipeline_env / "work" / "finetuned_checkpoint"

    assert _kill_when(train, lambda: _first_checkpoint_written(work), timeout=600), \
        "training finished before it could be killed"
    assert not (pipeline_env / "storage" / "finetuned_checkpoint").exists()
    resumed = _cli(*train)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    checkpoint = pipeline_env / "storage" / "finetuned_checkpoint"
    summary = json.loads((checkpoint / "training_summary.json").read_text())
    assert summary["resumed_from_step"] in (8, 16) and summary["steps"] == 24
    assert not any(work.iterdir())  # the work directory is cleaned once the checkpoint is published
    statuses = [run.status for run in dg.DagsterInstance.get().get_runs()]
    assert dg.DagsterRunStatus.STARTED not in statuses  # the killed run was marked failed, its pool slot freed
    assert dg.DagsterRunStatus.FAILURE in statuses

    # the same training without the kill, from the same (deterministic) features
    reference_home = tmp_path / "uninterrupted"
    monkeypatch.setenv("ASR_HOME", str(reference_home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "uninterrupted_dagster"))
    assert _cli("ingest").returncode == 0
    clean = _cli(*train)
    assert clean.returncode == 0, clean.stderr[-3000:]
    reference = json.loads((reference_home / "storage/finetuned_checkpoint/training_summary.json").read_text())
    assert reference["resumed_from_step"] is None
    assert summary["best_checkpoint_step"] == reference["best_checkpoint_step"]
    a = load_file(str(checkpoint / "model.safetensors"))
    b = load_file(str(reference_home / "storage/finetuned_checkpoint/model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-4, worst


def test_a_killed_trainings_checkpoints_stay_for_its_data_and_go_once_new_data_landed(pipeline_env, mysql_database,
                                                                                       korean_clips):
    """Killed last night: a training of other settings on the same data keeps its checkpoints (a rerun with the
    night's settings resumes them); once new batches landed, the next training removes them, since no rerun can
    resume them any more (core/work_dirs.py), instead of keeping gigabytes for every killed night."""
    assert _cli("ingest").returncode == 0
    work = pipeline_env / "work" / "finetuned_checkpoint"
    short = ["--batch-size", "4", "--eval-steps", "8", "--warmup-steps", "2"]
    assert _kill_when(["train", "--max-steps", "24", *short], lambda: _first_checkpoint_written(work), timeout=600), \
        "training finished before it could be killed"
    [killed] = [p for p in work.iterdir() if p.is_dir()]
    owner = json.loads((killed / "asr_work_owner.json").read_text())
    assert owner["host"] == socket.gethostname() and owner["data"]
    night = time.time() - 8 * 3600  # killed last night: past the grace a just-gone owner gets
    for folder, _, files in os.walk(killed):
        for item in [folder, *(os.path.join(folder, f) for f in files)]:
            os.utime(item, (night, night))
    status = _cli("status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    work_status = json.loads(status.stdout)["training_work"]
    assert work_status["unused"] == [killed.name] and work_status["bytes"] > 0  # what `status` says meanwhile

    same_data = _cli("train", "--max-steps", "8", *short)  # an operator's quick run: other settings, same data
    assert same_data.returncode == 0, same_data.stderr[-3000:]
    assert killed.is_dir() and [p for p in work.iterdir() if p.is_dir()] == [killed]
    assert "removed the work directory" not in same_data.stdout + same_data.stderr

    engine = sa.create_engine(mysql_database)  # new rows: the next batch
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": "/cul_m01/archive/" + Path(c["audio_path"]).name, "t": c["transcript"]}
                      for c in korean_clips[:10]])
    engine.dispose()
    assert _cli("ingest").returncode == 0
    new_data = _cli("train", "--max-steps", "8", *short)

    assert new_data.returncode == 0, new_data.stderr[-3000:]
    assert not killed.exists() and not any(work.iterdir())
    log = new_data.stdout + new_data.stderr
    assert f"removed the work directory {killed.name} of an abandoned training" in log
    assert "is gone" in log and "it is of other data than this training's, so no rerun can resume it" in log
    summary = json.loads((pipeline_env / "storage/finetuned_checkpoint/training_summary.json").read_text())
    assert summary["resumed_from_step"] is None and summary["steps"] == 8
