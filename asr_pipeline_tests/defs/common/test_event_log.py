"""defs/common/event_log.py: the instance's SQLite event log with its databases kept open. Real instances written
by the CLI's dagster.yaml, real runs, other processes writing to and watched from the same instance (one killed,
one forked), Dagster's own class reading the same files."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.base import EventLogCursor
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from asr_pipeline.cli import runs
from asr_pipeline.defs.common import event_log
from asr_pipeline.defs.common.event_log import PooledSqliteEventLogStorage

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


def _instance(home: Path, monkeypatch) -> dg.DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return runs._instance()


def _materialize(instance, times: int = 1) -> list[str]:
    return [dg.materialize([counted], instance=instance).run_id for _ in range(times)]


def _in_another_process(home: Path, code: str, **popen) -> subprocess.Popen:
    """`code` in a new Python process on the instance at home (this test module importable as `tests`)."""
    prelude = ("import os, signal, sys, dagster as dg; from asr_pipeline.cli import runs;"
               "import asr_pipeline_tests.defs.common.test_event_log as tests; instance = runs._instance();")
    return subprocess.Popen([sys.executable, "-c", prelude + code], cwd=REPO, text=True,
                            env={**os.environ, "DAGSTER_HOME": str(home), **popen.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _earlier_configs() -> list[str]:
    """The dagster.yaml files earlier versions wrote: before the event log entry, and with its first comment."""
    before = re.sub(r"event_log_storage:.*?env: DAGSTER_HOME\n", "", runs.INSTANCE_CONFIG, flags=re.S)
    first_comment = runs.INSTANCE_CONFIG.replace(
        "its files kept open (0.36 s of an ingest process)", "its files kept open between writes (0.3 s an ingest)")
    return [before, first_comment]


def test_the_cli_instance_opens_each_database_once_in_dagsters_own_files(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    connects = []
    sqlite_connect = sqlite3.dbapi2.connect  # what SQLAlchemy's pysqlite dialect calls

    def counted_connect(database, *args, **kwargs):
        if f"{os.sep}history{os.sep}runs{os.sep}" in str(database):  # the event log's, not the run storage's
            connects.append(database)
        return sqlite_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3.dbapi2, "connect", counted_connect)
    run_ids = _materialize(instance, event_log.OPEN_DATABASES + 3)
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
    (tmp_path / "dagster" / "dagster.yaml").write_text(_earlier_configs()[0] + "# edited\n")
    plain = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert type(plain.event_log_storage) is SqliteEventLogStorage
    assert plain.get_latest_materialization_event(dg.AssetKey("counted")).run_id == run_ids[-1]
    assert all(plain.get_run_by_id(run_id).is_success for run_id in run_ids)
    assert sum(len(plain.all_logs(run_id)) for run_id in run_ids) == events


def test_a_run_written_by_another_process_is_watched_live(tmp_path, monkeypatch):
    """The UI's live log (instance.watch_event_logs) of a run another process executes, while it runs."""
    instance = _instance(tmp_path / "dagster", monkeypatch)
    _materialize(instance)  # this process holds the index open, as a webserver does
    run_id = "0f0f0f0f-1111-2222-3333-444444444444"
    seen = []
    arrived = threading.Event()

    def on_event(entry, cursor):
        seen.append(entry)
        if entry.user_message == "halfway there":
            arrived.set()

    instance.watch_event_logs(run_id, None, on_event)
    worker = _in_another_process(
        tmp_path / "dagster", f"dg.Definitions(assets=[tests.slow]).resolve_implicit_global_asset_job_def()"
                              f".execute_in_process(instance=instance, run_id='{run_id}')",
        env={"SLOW_ASSET_SECONDS": "20"})
    try:
        assert arrived.wait(15), (worker.poll(), [e.user_message for e in seen])
        assert worker.poll() is None  # seen while the run still runs
    finally:
        worker.kill()
        worker.communicate()
        instance.end_watch_event_logs(run_id, on_event)
        instance.dispose()


def test_each_viewer_gets_the_events_after_its_own_cursor_and_a_failing_one_stops_nobody(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    (run_id,) = _materialize(instance)
    records = instance.get_records_for_run(run_id).records
    middle = len(records) // 2
    after_middle = [r.storage_id for r in records[middle + 1:]]
    got = {"first": [], "later": [], "failing": []}
    done = threading.Event()

    def viewer(name):
        def on_event(entry, cursor):
            got[name].append(EventLogCursor.parse(cursor).storage_id())
            if name == "failing":
                raise RuntimeError("the viewer's browser went away")
            if name == "later" and len(got["later"]) == len(after_middle):
                done.set()
        return on_event

    viewers = {name: viewer(name) for name in got}
    instance.watch_event_logs(run_id, None, viewers["first"])
    instance.watch_event_logs(run_id, None, viewers["failing"])
    time.sleep(1)  # the first viewers have read the whole run
    instance.watch_event_logs(run_id, EventLogCursor.from_storage_id(records[middle].storage_id).to_string(),
                              viewers["later"])
    assert done.wait(10), got
    # each in order, from its own cursor; the failing one got every event regardless
    assert got["first"] == got["failing"] == [r.storage_id for r in records]
    assert got["later"] == after_middle
    storage = instance.event_log_storage
    watches = list(storage._watches.values())
    for name, callback in viewers.items():
        instance.end_watch_event_logs(run_id, callback)
    for watch in watches:
        watch.join(5)
    assert not storage._watches and not any(watch.is_alive() for watch in watches)
    instance.watch_event_logs(run_id, None, viewers["first"])
    instance.dispose()  # stops the viewers it has
    assert not [t for t in threading.enumerate() if t.name.startswith("asr-watch-")]


def test_writes_of_another_process_and_of_other_threads_are_seen(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    _materialize(instance)  # this process now holds the index open
    other = _in_another_process(tmp_path / "dagster", "print(dg.materialize([tests.counted], instance=instance).run_id)")
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
    exited = _in_another_process(home, "print(dg.materialize([tests.counted], instance=instance).run_id)")
    out, err = exited.communicate(timeout=120)
    assert exited.returncode == 0, err[-2000:]
    assert not list(runs_dir.glob("*.db-wal")) and not list(runs_dir.glob("*.db-shm"))

    # killed with its databases open (no close, no checkpoint): its commits are in the write-ahead logs left beside
    # the files, which the next process to open them reads
    killed = _in_another_process(home, "print(dg.materialize([tests.counted], instance=instance).run_id, flush=True);"
                                       "os.kill(os.getpid(), signal.SIGKILL)")
    out, err = killed.communicate(timeout=120)
    assert killed.returncode == -9, err[-2000:]
    assert list(runs_dir.glob("*.db-wal"))  # it did die with them open
    reader = _in_another_process(home, "r = instance.get_latest_materialization_event(dg.AssetKey('counted'));"
                                       "logs = instance.all_logs(r.run_id);"
                                       "print(r.run_id, instance.get_run_by_id(r.run_id).is_success,"
                                       "'PIPELINE_SUCCESS' in [e.dagster_event.event_type_value for e in logs"
                                       " if e.dagster_event])")
    seen, err = reader.communicate(timeout=120)
    assert seen.split() == [out.split()[-1], "True", "True"], err[-2000:]


def test_wipe_closes_before_it_deletes_and_a_forked_child_keeps_off_its_parents_connections(tmp_path,
                                                                                           monkeypatch):
    instance = _instance(tmp_path / "dagster", monkeypatch)
    storage = instance.event_log_storage
    (run_id,) = _materialize(instance)
    run = instance.get_run_by_id(run_id)
    storage.wipe()  # deletes the runs' files: their connections were closed first
    assert list(storage._engines) == ["index"]  # the runs' databases closed (the index reopened by the wipe)
    assert instance.get_latest_materialization_event(dg.AssetKey("counted")) is None
    instance.report_engine_event("written after the wipe", run)  # the same run's database, made again
    fresh = _in_another_process(tmp_path / "dagster",
                                f"print([e.message for e in instance.all_logs('{run_id}')])")
    out, err = fresh.communicate(timeout=120)
    assert "written after the wipe" in out, err[-2000:]

    (run_id,) = _materialize(instance)
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


def test_an_instance_is_never_split_over_two_directories(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    _instance(elsewhere, monkeypatch)
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(runs.INSTANCE_CONFIG)
    with pytest.raises(dg.DagsterInvariantViolationError, match=f"set DAGSTER_HOME to {home}"):
        dg.DagsterInstance.from_config(str(home))  # DAGSTER_HOME still names `elsewhere`: refused as it opens
    assert not list((elsewhere / "history" / "runs").glob("*-*.db"))
    # its artifacts moved by an edited dagster.yaml, the instance's directory cannot be told as it opens: refused at
    # its first use, and every one after
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "dagster.yaml").write_text(runs.INSTANCE_CONFIG + _artifacts_in(tmp_path / "moved_art"))
    split = dg.DagsterInstance.from_config(str(moved))
    for _ in range(2):
        with pytest.raises(dg.DagsterInvariantViolationError, match=f"set DAGSTER_HOME to {moved}"):
            _materialize(split)
    assert not list((elsewhere / "history" / "runs").glob("*-*.db"))  # no run's events went there
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (run_id,) = _materialize(dg.DagsterInstance.from_config(str(home)))
    assert (home / "history" / "runs" / f"{run_id}.db").exists()

    # a "~" left unexpanded (an env file, a systemd unit): the same instance, in the home directory
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("DAGSTER_HOME", "~/dagster")
    (run_id,) = _materialize(runs._instance())
    assert (tmp_path / "user" / "dagster" / "history" / "runs" / f"{run_id}.db").exists()
    assert os.environ["DAGSTER_HOME"] == str(tmp_path / "user" / "dagster")

    # artifacts kept elsewhere by an edited dagster.yaml: the runs and the event log still share the instance
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "dagster.yaml").write_text(runs.INSTANCE_CONFIG + _artifacts_in(tmp_path / "art"))
    (run_id,) = _materialize(_instance(edited, monkeypatch))
    assert (edited / "history" / "runs" / f"{run_id}.db").exists()


def _artifacts_in(directory: Path) -> str:
    return ("local_artifact_storage:\n  module: dagster.core.storage.root\n  class: LocalArtifactStorage\n"
            f"  config:\n    base_dir: {directory}\n")


def test_a_dagster_yaml_an_earlier_version_wrote_is_brought_up_to_date_and_an_edited_one_left(tmp_path):
    for number, earlier in enumerate(_earlier_configs()):
        written = tmp_path / f"written{number}" / "dagster.yaml"
        written.parent.mkdir()
        written.write_text(earlier)
        runs.write_instance_config(written)
        assert written.read_text() == runs.INSTANCE_CONFIG

    edited = tmp_path / "edited" / "dagster.yaml"
    edited.parent.mkdir()
    edited.write_text(_earlier_configs()[0] + "run_monitoring:\n  enabled: true\n")
    runs.write_instance_config(edited)
    assert "PooledSqliteEventLogStorage" not in edited.read_text()
    assert not list(tmp_path.rglob(".dagster.yaml.*"))


@pytest.mark.parametrize("config", [runs.INSTANCE_CONFIG, *_earlier_configs()])
def test_an_instance_written_by_any_version_opens(tmp_path, monkeypatch, config):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(config)
    instance = _instance(home, monkeypatch)
    (run_id,) = _materialize(instance)
    assert instance.get_run_by_id(run_id).is_success
    assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)


def test_dagsters_methods_this_class_restates_are_the_ones_it_was_written_against():
    """_connect and wipe restate Dagster 1.13's (watch, end_watch and dispose replace its file watcher). When a Dagster
    upgrade changes one, read the new one and bring PooledSqliteEventLogStorage in line before updating the hash."""
    restated = {"_connect": "b8435f2665689760", "wipe": "de02c63676e7d477", "watch": "a223e2f9cf3abda9",
                "end_watch": "dd45a3cadaad5f75", "dispose": "df16dafbfa8427c1"}
    now = {name: hashlib.sha256(inspect.getsource(getattr(SqliteEventLogStorage, name)).encode()).hexdigest()[:16]
           for name in restated}
    assert now == restated
