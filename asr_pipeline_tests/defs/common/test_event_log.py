"""defs/common/event_log.py: the instance's SQLite event log with its databases kept open. Real instances written
by the CLI's dagster.yaml, real runs, another process writing to the same instance, Dagster's own class reading the
same files."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from asr_pipeline.cli import runs
from asr_pipeline.defs.common import event_log
from asr_pipeline.defs.common.event_log import PooledSqliteEventLogStorage


@dg.asset
def counted(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"run": context.run.run_id})


def _instance(home: Path, monkeypatch) -> dg.DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return runs._instance()


def _materialize(instance, times: int = 1) -> list[str]:
    return [dg.materialize([counted], instance=instance).run_id for _ in range(times)]


def test_the_cli_instance_keeps_its_event_log_open_in_dagsters_own_files(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    run_ids = _materialize(instance, event_log.OPEN_DATABASES + 3)
    assert len(storage._engines) == event_log.OPEN_DATABASES  # the oldest runs' databases were closed
    runs_dir = tmp_path / "dagster" / "history" / "runs"
    assert {path.stem for path in runs_dir.glob("*.db")} == {*run_ids, "index"}
    instance.dispose()
    assert not storage._engines and not list(runs_dir.glob("*-wal"))  # closed: the logs folded into the files

    # back to Dagster's own class (the entry deleted from dagster.yaml): it reads every event from the same files
    (tmp_path / "dagster" / "dagster.yaml").write_text(runs.EARLIER_INSTANCE_CONFIGS[0] + "# edited\n")
    plain = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert type(plain.event_log_storage).__name__ == "SqliteEventLogStorage"
    latest = plain.get_latest_materialization_event(dg.AssetKey("counted"))
    assert latest.run_id == run_ids[-1]
    assert all(plain.get_run_by_id(run_id).is_success for run_id in run_ids)
    assert len(plain.all_logs(run_ids[0])) == len(instance.all_logs(run_ids[0])) > 5


def test_writes_of_another_process_and_of_other_threads_are_seen(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    _materialize(instance)  # this process now holds the index open
    other = subprocess.run(
        [sys.executable, "-c", "import dagster as dg; from asr_pipeline.cli import runs;"
         "from asr_pipeline_tests.defs.common.test_event_log import counted;"
         "print(dg.materialize([counted], instance=runs._instance()).run_id)"],
        env={**__import__("os").environ, "DAGSTER_HOME": str(tmp_path / "dagster")},
        cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr[-2000:]
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")).run_id == other.stdout.split()[-1]

    # one connection a database, shared by threads in turn
    def report(thread: int) -> None:
        for i in range(20):
            instance.report_runless_asset_event(dg.AssetMaterialization("threaded", metadata={"n": thread * 100 + i}))

    threads = [threading.Thread(target=report, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = instance.fetch_materializations(dg.AssetKey("threaded"), limit=100).records
    assert sorted(r.asset_materialization.metadata["n"].value for r in records) == sorted(
        n * 100 + i for n in range(3) for i in range(20))


def test_what_a_killed_process_wrote_is_kept(tmp_path, monkeypatch):
    """Killed with its databases open (no close, no checkpoint): its commits are in the write-ahead logs left
    beside the files, which the next process to open them reads."""
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, dagster as dg; from asr_pipeline.cli import runs;"
         "from asr_pipeline_tests.defs.common.test_event_log import counted;"
         "print(dg.materialize([counted], instance=runs._instance()).run_id, flush=True);"
         "os.kill(os.getpid(), signal.SIGKILL)"],
        env={**__import__("os").environ, "DAGSTER_HOME": str(tmp_path / "dagster")},
        cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list((tmp_path / "dagster" / "history" / "runs").glob("*.db-wal"))  # it did die with them open
    instance = _instance(tmp_path / "dagster", monkeypatch)
    run_id = killed.stdout.split()[-1]
    assert instance.get_run_by_id(run_id).is_success
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")).run_id == run_id
    assert "PIPELINE_SUCCESS" in [e.dagster_event.event_type_value for e in instance.all_logs(run_id) if e.dagster_event]


def test_wipe_and_a_forked_child_do_not_use_stale_connections(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    storage = instance.event_log_storage
    _materialize(instance, 2)
    storage.wipe()  # deletes the runs' files: their connections were closed first
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")) is None
    (run_id,) = _materialize(instance)
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")).run_id == run_id

    connections = [engine.pool for engine in storage._engines.values()]
    storage._engines_pid = -1  # as in a child forked from this process
    (later,) = _materialize(instance)
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")).run_id == later
    assert all(pool not in [engine.pool for engine in storage._engines.values()] for pool in connections)


def test_a_dagster_yaml_an_earlier_version_wrote_is_brought_up_to_date_and_an_edited_one_left(tmp_path):
    written = tmp_path / "written" / "dagster.yaml"
    written.parent.mkdir()
    written.write_text(runs.EARLIER_INSTANCE_CONFIGS[0])
    runs.write_instance_config(written)
    assert written.read_text() == runs.INSTANCE_CONFIG

    edited = tmp_path / "edited" / "dagster.yaml"
    edited.parent.mkdir()
    edited.write_text(runs.EARLIER_INSTANCE_CONFIGS[0] + "run_monitoring:\n  enabled: true\n")
    runs.write_instance_config(edited)
    assert "PooledSqliteEventLogStorage" not in edited.read_text()
    assert not list(tmp_path.rglob(".dagster.yaml.*"))


@pytest.mark.parametrize("config", [runs.INSTANCE_CONFIG, *runs.EARLIER_INSTANCE_CONFIGS])
def test_an_instance_written_by_any_version_opens(tmp_path, monkeypatch, config):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(config)
    instance = _instance(home, monkeypatch)
    (run_id,) = _materialize(instance)
    assert instance.get_run_by_id(run_id).is_success
    assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
