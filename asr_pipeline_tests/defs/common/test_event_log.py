"""defs/common/event_log.py: the instance's SQLite event log with its databases kept open. Real instances written
by the CLI's dagster.yaml, real runs, other processes writing to the same instance (one killed, one forked), Dagster's
own class reading the same files."""

from __future__ import annotations

import hashlib
import inspect
import os
import sqlite3
import threading

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from asr_pipeline.defs.common import event_log
from asr_pipeline.defs.common.event_log import PooledSqliteEventLogStorage

from asr_pipeline_tests.defs.common.event_log_runs import earlier_configs, in_another_process, materialize, open_instance


def test_the_cli_instance_opens_each_database_once_in_dagsters_own_files(tmp_path, monkeypatch):
    instance = open_instance(tmp_path / "dagster", monkeypatch)
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    connects = []
    sqlite_connect = sqlite3.dbapi2.connect  # what SQLAlchemy's pysqlite dialect calls

    def counted_connect(database, *args, **kwargs):
        if f"{os.sep}history{os.sep}runs{os.sep}" in str(database):  # the event log's, not the run storage's
            connects.append(database)
        return sqlite_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3.dbapi2, "connect", counted_connect)
    run_ids = materialize(instance, event_log.OPEN_DATABASES + 3)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", sqlite_connect)
    events = sum(len(instance.all_logs(run_id)) for run_id in run_ids)
    # Dagster's class connects for every event and more; here: each run's new database (made and stamped: three
    # connections) and the index once
    assert events > 10 * len(run_ids) and len(run_ids) <= len(connects) <= 3 * len(run_ids) + 2, (len(connects), events)
    assert len(storage._engines) == event_log.OPEN_DATABASES  # the oldest runs' databases were closed
    runs_dir = tmp_path / "dagster" / "history" / "runs"
    assert {path.stem for path in runs_dir.glob("*.db")} == {*run_ids, "index"}
    instance.dispose()
    assert not storage._engines and not list(runs_dir.glob("*-wal"))  # closed: the logs folded into the files

    # back to Dagster's own class (the entry deleted from dagster.yaml): it reads every event from the same files
    (tmp_path / "dagster" / "dagster.yaml").write_text(earlier_configs()[0] + "# edited\n")
    plain = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert type(plain.event_log_storage) is SqliteEventLogStorage
    assert plain.get_latest_materialization_event(dg.AssetKey("counted")).run_id == run_ids[-1]
    assert all(plain.get_run_by_id(run_id).is_success for run_id in run_ids)
    assert sum(len(plain.all_logs(run_id)) for run_id in run_ids) == events


def test_writes_of_another_process_and_of_other_threads_are_seen(tmp_path, monkeypatch):
    instance = open_instance(tmp_path / "dagster", monkeypatch)
    materialize(instance)  # this process now holds the index open
    other = in_another_process(tmp_path / "dagster", "print(dg.materialize([tests.counted], instance=instance).run_id)")
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err[-2000:]
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")).run_id == out.split()[-1]

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


def test_a_process_that_exits_leaves_no_write_ahead_logs_and_a_killed_one_loses_nothing(tmp_path):
    home = tmp_path / "dagster"
    runs_dir = home / "history" / "runs"
    exited = in_another_process(home, "print(dg.materialize([tests.counted], instance=instance).run_id)")
    out, err = exited.communicate(timeout=120)
    assert exited.returncode == 0, err[-2000:]
    assert not list(runs_dir.glob("*.db-wal")) and not list(runs_dir.glob("*.db-shm"))

    # killed with its databases open (no close, no checkpoint): its commits are in the write-ahead logs left beside
    # the files, which the next process to open them reads
    killed = in_another_process(home, "print(dg.materialize([tests.counted], instance=instance).run_id, flush=True);"
                                       "os.kill(os.getpid(), signal.SIGKILL)")
    out, err = killed.communicate(timeout=120)
    assert killed.returncode == -9, err[-2000:]
    assert list(runs_dir.glob("*.db-wal"))  # it did die with them open
    reader = in_another_process(home, "r = instance.get_latest_materialization_event(dg.AssetKey('counted'));"
                                       "logs = instance.all_logs(r.run_id);"
                                       "print(r.run_id, instance.get_run_by_id(r.run_id).is_success,"
                                       "'PIPELINE_SUCCESS' in [e.dagster_event.event_type_value for e in logs"
                                       " if e.dagster_event])")
    seen, err = reader.communicate(timeout=120)
    assert seen.split() == [out.split()[-1], "True", "True"], err[-2000:]


def test_wipe_closes_before_it_deletes_and_a_forked_child_keeps_off_its_parents_connections(tmp_path,
                                                                                           monkeypatch):
    instance = open_instance(tmp_path / "dagster", monkeypatch)
    storage = instance.event_log_storage
    (run_id,) = materialize(instance)
    run = instance.get_run_by_id(run_id)
    storage.wipe()  # deletes the runs' files: their connections were closed first
    assert list(storage._engines) == ["index"]  # the runs' databases closed (the index reopened by the wipe)
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")) is None
    instance.report_engine_event("written after the wipe", run)  # the same run's database, made again
    fresh = in_another_process(tmp_path / "dagster",
                                f"print([e.message for e in instance.all_logs('{run_id}')])")
    out, err = fresh.communicate(timeout=120)
    assert "written after the wipe" in out, err[-2000:]

    (run_id,) = materialize(instance)
    for engine in storage._engines.values():
        engine.made_by_parent = True
    pid = os.fork()
    if pid == 0:  # the child: its own connections, and it closes only those
        code = 1
        try:
            instance.report_runless_asset_event(dg.AssetMaterialization("forked"))
            code = 2 if any(getattr(e, "made_by_parent", False) for e in storage._engines.values()) else 0
            storage.close_databases()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    instance.report_runless_asset_event(dg.AssetMaterialization("parent"))  # the parent's connections still work
    assert instance.get_latest_materialization_event(dg.AssetKey("forked")) is not None
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")).run_id == run_id


def test_dagsters_methods_this_class_restates_are_the_ones_it_was_written_against():
    """_connect and wipe restate Dagster 1.13's (watch, end_watch and dispose replace its file watcher). When a Dagster
    upgrade changes one, read the new one and bring PooledSqliteEventLogStorage in line before updating the hash."""
    restated = {"_connect": "b8435f2665689760", "wipe": "de02c63676e7d477", "watch": "a223e2f9cf3abda9",
                "end_watch": "dd45a3cadaad5f75", "dispose": "df16dafbfa8427c1"}
    now = {name: hashlib.sha256(inspect.getsource(getattr(SqliteEventLogStorage, name)).encode()).hexdigest()[:16]
           for name in restated}
    assert now == restated
