"""The Dagster instance's event log on one machine: Dagster's own SQLite event log (a database per run and an index,
the same files, the same schema), with each database's connection kept open between uses.

Dagster's SqliteEventLogStorage builds a new SQLAlchemy engine and opens the SQLite file again for every read and
write, and the close of each folds SQLite's write-ahead log back into the file: 274 connections in one
`asr-pipeline ingest`, 0.36 s of a 4.4 s process on a 2-core machine (paired, docs/BENCHMARKS.md, issue 14). Here each
database keeps one engine whose pool holds its connection open; Dagster's lock still serialises every use.

Kept open, the files do not change on each write (the writes sit in the -wal file until a checkpoint), so the UI's
live view of a run cannot wait for the file to change, as Dagster's watchdog does: it polls the run's events, as
Dagster's MySQL and Postgres storages do (SqlPollingEventWatcher).

The instance's dagster.yaml (asr_pipeline/cli/runs.py writes it) names this class with `dagster_home: {env:
DAGSTER_HOME}`; an instance opened from another directory than $DAGSTER_HOME is refused, never split over two. Dagster's
class reads the same files: deleting the event_log_storage entry goes back to it (and is what a checkout of an
earlier version, which lacks this module, needs)."""

from __future__ import annotations

import atexit
import glob
import os
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from dagster._config import Field, StringSource
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.storage.event_log.base import EventLogCursor
from dagster._core.storage.event_log.polling_event_watcher import SqlPollingEventWatcher
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

OPEN_DATABASES = 8  # a webserver reads many runs' databases: the least recently used ones are closed past this
_STORAGES: weakref.WeakSet = weakref.WeakSet()  # closed at exit (a code server makes an instance per sensor tick)


def event_log_directory(dagster_home: str) -> str:
    """Where Dagster's default SQLite storage keeps the event log of the instance at dagster_home."""
    return os.path.join(os.path.abspath(dagster_home), "history", "runs", "")


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage that opens each database once per process (up to OPEN_DATABASES of them)."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before Dagster's __init__: it connects
        self._engines_pid = os.getpid()
        self._event_watcher: SqlPollingEventWatcher | None = None
        self._watcher_lock = threading.Lock()
        super().__init__(base_dir, inst_data=inst_data)
        _STORAGES.add(self)

    @classmethod
    def config_type(cls):
        return {"dagster_home": Field(StringSource, description="the instance's directory ($DAGSTER_HOME); the "
                                      "event log is in its history/runs, where Dagster's default storage puts it")}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(event_log_directory(config_value["dagster_home"]), inst_data=inst_data)

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        expected = event_log_directory(instance.root_directory)
        if os.path.realpath(self._base_dir) != os.path.realpath(expected):
            raise DagsterInvariantViolationError(
                f"The Dagster instance at {instance.root_directory} would keep its event log in {self._base_dir} "
                "(its dagster.yaml's event_log_storage takes the directory from $DAGSTER_HOME): set DAGSTER_HOME to "
                f"{instance.root_directory} to open it.")

    # -- connections --------------------------------------------------------------------------------------------

    def _forget_inherited(self) -> None:
        """In a forked child: the parent's connections are not its to use or close. Called with the lock held."""
        if self._engines_pid != os.getpid():
            for engine in self._engines.values():
                engine.dispose(close=False)
            self._engines.clear()
            self._engines_pid = os.getpid()

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, made on first use; called with self._db_lock held."""
        self._forget_inherited()
        engine = self._engines.get(shard)
        if engine is None:
            # one connection kept, used by one thread at a time (the lock), so any thread may take it from the
            # pool; Dagster's _initdb opens a second one while it holds the first (closed when it is returned)
            engine = create_engine(self.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1,
                                   max_overflow=4,
                                   connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
            self._engines[shard] = engine
            while len(self._engines) > OPEN_DATABASES:
                self._engines.popitem(last=False)[1].dispose()
        self._engines.move_to_end(shard)
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # Dagster's _connect, with the engine kept: one transaction per use, the database made on first use
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _close_all(self) -> None:
        """Called with the lock held. SQLite folds each write-ahead log into its file when the last connection closes,
        as it did after every use with Dagster's class."""
        self._forget_inherited()
        while self._engines:
            self._engines.popitem()[1].dispose()

    def close_databases(self) -> None:
        with self._db_lock:
            self._close_all()

    def wipe(self) -> None:
        # Dagster's wipe, with the runs' files closed and deleted under the lock: no thread may open one in between
        # and keep a deleted file open. (Another process's open connections, a UI's, still see the old files.)
        with self._db_lock:
            self._close_all()
            for path in glob.glob(os.path.join(self._base_dir, "*.db*")):
                name = os.path.basename(path)
                if name.split(".db")[0] != INDEX_SHARD_NAME and name.endswith((".db", ".db-wal", ".db-shm")):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            self._initialized_dbs = set()
        self._wipe_index()

    # -- watching a run (the UI's live log) -------------------------------------------------------------------

    def watch(self, run_id: str, cursor: str | None, callback) -> None:
        if cursor and EventLogCursor.parse(cursor).is_offset_cursor():
            raise DagsterInvariantViolationError("Cannot watch a run's events from an offset cursor")
        with self._watcher_lock:
            if self._event_watcher is None:
                self._event_watcher = SqlPollingEventWatcher(self)
            watcher = self._event_watcher
        watcher.watch_run(run_id, cursor, callback)

    def end_watch(self, run_id: str, handler) -> None:
        with self._watcher_lock:
            watcher = self._event_watcher
        if watcher is not None:
            watcher.unwatch_run(run_id, handler)

    def dispose(self) -> None:
        with self._watcher_lock:
            watcher, self._event_watcher = self._event_watcher, None
        if watcher is not None:
            watcher.close()
        super().dispose()
        self.close_databases()


@atexit.register
def _close_at_exit() -> None:
    for storage in list(_STORAGES):
        storage.close_databases()
