"""The Dagster instance's event log on one machine: Dagster's own SQLite event log (a database per run and an index,
the same files, the same schema), with each database's connection kept open between uses.

Dagster's SqliteEventLogStorage builds a new SQLAlchemy engine and opens the SQLite file again for every read and
write, and the close of each folds SQLite's write-ahead log back into the file: 274 connections in one
`asr-pipeline ingest`, 0.36 s of a 4.4 s process on a 2-core machine (paired, docs/BENCHMARKS.md, issue 14). Here each
database keeps one engine whose pool holds its connection open; Dagster's lock still serialises every use. A
process keeps at most OPEN_DATABASES run databases open (a UI or daemon holds them, and their -wal files stay, for as
long as it runs) and closes them at exit.

Kept open, the files do not change on each write (the writes sit in the -wal file until a checkpoint), so the UI's
live view of a run cannot wait for the file to change, as Dagster's watchdog does: each viewer polls the run's
events after its own cursor every WATCH_POLL_SECONDS, less often (up to WATCH_QUIET_POLL_SECONDS) while nothing
comes, as Dagster's MySQL storage polls.

The instance's dagster.yaml (asr_pipeline/cli/runs.py writes it) names this class with `dagster_home: {env:
DAGSTER_HOME}`, so every process that opens the instance needs DAGSTER_HOME; one whose runs are elsewhere than
$DAGSTER_HOME is refused, never split over two directories. Dagster's class reads the same files: deleting the
event_log_storage entry goes back to it (and is what a checkout of an earlier version, which lacks this module,
needs)."""

from __future__ import annotations

import atexit
import glob
import logging
import os
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from dagster._config import Field, StringSource
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.storage.event_log.base import EventLogCursor
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

OPEN_DATABASES = 8  # a webserver reads many runs' databases: the least recently used ones are closed past this
WATCH_POLL_SECONDS = 0.5  # how often a viewer of a run's live log reads its new events, and after a quiet spell
WATCH_QUIET_POLL_SECONDS = 4.0  # at most this seldom (a finished run left open in a browser tab)
WATCH_BATCH = 1_000  # events read at a time (a long training run's log is read in pieces, the first at once)
SQLITE_URL = "sqlite:///"  # how Dagster's SQLite run storage names its database (create_db_conn_string)
_STORAGES: weakref.WeakSet = weakref.WeakSet()  # closed at exit (a code server makes an instance per sensor tick)
log = logging.getLogger(__name__)


def event_log_directory(dagster_home: str) -> str:
    """Where Dagster's default SQLite storage keeps the event log of the instance at dagster_home."""
    return os.path.join(os.path.abspath(os.path.expanduser(dagster_home)), "history", "runs", "")


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage that opens each database once per process (up to OPEN_DATABASES of them)."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before Dagster's __init__: it connects
        self._watches: dict = {}  # (run id, callback) -> its _RunWatch
        self._watcher_lock = threading.Lock()
        self._home_checked = False
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
        """Refuses, as it opens, an instance loaded from another directory than $DAGSTER_HOME (its dagster.yaml in
        its root directory). With its artifacts moved elsewhere by the dagster.yaml, the root says nothing: the first
        use checks the run storage's directory (_check_home)."""
        super().register_instance(instance)
        root = instance.root_directory
        if os.path.exists(os.path.join(root, "dagster.yaml")):
            self._refuse_unless_home(root)
            self._home_checked = True

    def _refuse_unless_home(self, home: str) -> None:
        if os.path.realpath(self._base_dir) != os.path.realpath(event_log_directory(home)):
            raise DagsterInvariantViolationError(  # on every use: nothing is read or written elsewhere
                f"The Dagster instance at {home} would keep its event log in {self._base_dir} (its dagster.yaml's "
                f"event_log_storage takes the directory from $DAGSTER_HOME): set DAGSTER_HOME to {home} to open it.")

    def _check_home(self) -> None:
        """Once the instance is open (at the first use after it registered): its runs and this event log must be in
        the same instance directory. Called with the lock held."""
        weak = getattr(self, "_instance_weakref", None)
        instance = weak() if weak is not None else None
        if instance is None:
            return  # Dagster's __init__ (no instance yet) or one gone
        run_storage = getattr(instance, "_run_storage", None)
        if run_storage is None:
            return  # the instance is still being made: the next use checks
        runs_url = getattr(run_storage, "_conn_string", "")
        if runs_url.startswith(SQLITE_URL):  # (runs kept in another database: nothing to compare)
            # <home>/history/runs.db, as Dagster wrote it (create_db_conn_string: the path as is, not URL-quoted)
            runs_db = "/" + runs_url[len(SQLITE_URL):].lstrip("/")
            self._refuse_unless_home(os.path.dirname(os.path.dirname(runs_db)))
        self._home_checked = True

    # -- connections --------------------------------------------------------------------------------------------

    def _forget_after_fork(self) -> None:
        """In a forked child (os.register_at_fork): the parent's connections are not its to use, its locks may have
        been held by a parent thread at the fork, and the parent's watcher threads do not exist here."""
        self._db_lock = threading.Lock()
        self._watcher_lock = threading.Lock()
        for engine in self._engines.values():
            engine.dispose(close=False)  # drops them without closing the parent's
        self._engines.clear()
        self._watches = {}

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, made on first use; called with self._db_lock held."""
        if not self._home_checked:
            self._check_home()
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
        watch = _RunWatch(self, run_id, cursor, callback)
        with self._watcher_lock:
            earlier = self._watches.pop((run_id, callback), None)
            self._watches[(run_id, callback)] = watch
        if earlier is not None:
            earlier.stopped.set()
        watch.start()

    def end_watch(self, run_id: str, handler) -> None:
        with self._watcher_lock:
            watch = self._watches.pop((run_id, handler), None)
        if watch is not None:
            watch.stopped.set()  # not joined: end_watch may come from the callback, on the watch's own thread

    def dispose(self) -> None:
        with self._watcher_lock:
            watches, self._watches = list(self._watches.values()), {}
        for watch in watches:
            watch.stopped.set()
        for watch in watches:
            if watch is not threading.current_thread():
                watch.join(timeout=10)
        super().dispose()
        self.close_databases()


class _RunWatch(threading.Thread):
    """One viewer of one run: reads the run's events after the viewer's own cursor every WATCH_POLL_SECONDS and
    hands them over in order. A viewer that comes later than another gets its own history, from its own cursor."""

    def __init__(self, storage: PooledSqliteEventLogStorage, run_id: str, cursor: str | None, callback):
        super().__init__(name=f"asr-watch-{run_id}", daemon=True)
        self.storage, self.run_id, self.cursor, self.callback = storage, run_id, cursor, callback
        self.stopped = threading.Event()

    def run(self) -> None:
        wait = WATCH_POLL_SECONDS
        while not self.stopped.is_set():
            more = False
            try:
                page = self.storage.get_records_for_run(self.run_id, cursor=self.cursor, limit=WATCH_BATCH)
                more = page.has_more
                for record in page.records:
                    if self.stopped.is_set():
                        return
                    self.cursor = EventLogCursor.from_storage_id(record.storage_id).to_string()
                    self._hand_over(record)
                if not page.records:
                    self.cursor = page.cursor
                # quiet: poll less and less often, up to WATCH_QUIET_POLL_SECONDS; new events: at once again
                wait = WATCH_POLL_SECONDS if page.records else min(2 * wait, WATCH_QUIET_POLL_SECONDS)
            except Exception:  # a locked database, a run whose log cannot be read: say so and try again
                log.exception("reading the events of run %s for a viewer failed; trying again", self.run_id)
            if not more:
                self.stopped.wait(wait)

    def _hand_over(self, record) -> None:
        try:
            self.callback(record.event_log_entry, self.cursor)
        except Exception:  # the viewer's own failure (a closed connection): it must not stop the others' events
            log.exception("a viewer of run %s failed on an event", self.run_id)


def _forget_after_fork_in_child() -> None:
    for storage in list(_STORAGES):
        storage._forget_after_fork()


os.register_at_fork(after_in_child=_forget_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    for storage in list(_STORAGES):
        storage.dispose()  # its viewers first, so none opens a database again after the close
