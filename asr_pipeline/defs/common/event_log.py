"""The Dagster instance's event log on one machine: Dagster's own SQLite event log (a database per run and an index,
the same files, the same schema), with each database's connection kept open between writes.

Dagster's SqliteEventLogStorage builds a new SQLAlchemy engine and opens the SQLite file again for every read and
write. An `asr-pipeline ingest` writes 49 events and reads the catalog many times over: 274 connections a run, about
0.3 s of a 4.6 s process on a 2-core machine (docs/BENCHMARKS.md, issue 14). Here each database keeps one engine
whose pool holds its connection open; Dagster's lock still serialises every use, as it does for the files it opens.

The instance's dagster.yaml (asr_pipeline/cli/runs.py writes it) names this class. Dagster's class reads the same
files, so an instance can go back to it by deleting the event_log_storage entry."""

from __future__ import annotations

import atexit
import os
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from dagster._config import Field, StringSource
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

OPEN_DATABASES = 8  # a webserver reads many runs' databases: the least recently used ones are closed past this


def event_log_directory(dagster_home: str) -> str:
    """Where Dagster's default SQLite storage keeps the event log of the instance at dagster_home."""
    return os.path.join(dagster_home, "history", "runs", "")


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage that opens each database once per process (up to OPEN_DATABASES of them)."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before Dagster's __init__: it connects
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data=inst_data)
        # closed at exit, as Dagster closes each file after each use: SQLite then folds the write-ahead log into the
        # database and removes it, instead of leaving a -wal and a -shm file beside every run's database
        atexit.register(_close_databases_of, weakref.ref(self))

    @classmethod
    def config_type(cls):
        return {"dagster_home": Field(StringSource, description="the instance's directory ($DAGSTER_HOME); the "
                                      "event log is in its history/runs, where Dagster's default storage puts it")}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(event_log_directory(config_value["dagster_home"]), inst_data=inst_data)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, made on first use; called with self._db_lock held."""
        if self._engines_pid != os.getpid():  # a forked child: its parent's connections are not its to use or close
            for engine in self._engines.values():
                engine.dispose(close=False)
            self._engines.clear()
            self._engines_pid = os.getpid()
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

    def _close_databases(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._close_databases()  # wipe deletes the runs' files: no connection may keep a deleted file open
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._close_databases()


def _close_databases_of(storage_ref) -> None:
    storage = storage_ref()
    if storage is not None:
        storage._close_databases()
