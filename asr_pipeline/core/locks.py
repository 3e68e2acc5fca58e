"""One planner at a time: the lock around cutting and registering ingest batches.

new_transcripts_sensor and `asr-pipeline ingest` both read the high-water mark, cut the rows above it and register
the new batches. Two of them interleaving could cut overlapping id ranges, so both do it under one lock named after
the transcript table. On MySQL/MariaDB that is the server's advisory lock (GET_LOCK, held by one connection and
released by the server if that connection dies, so a killed planner never leaves it locked); on PostgreSQL
pg_advisory_lock; on SQLite (the embedded default) and anything else an exclusive lock on a file beside the SQLite
file or in ASR_HOME (fcntl on POSIX, msvcrt on Windows, released by the OS when the process dies).
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa

from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.core.errors import PlannerBusy

MYSQL_LOCK_NAME_LIMIT = 64


def lock_name(table: TranscriptTable) -> str:
    """`asr_plan:<database>.<table>`: parallel databases (tests, other deployments) never share a lock."""
    name = f"asr_plan:{table.url.database or ''}.{table.spec.table}"
    if len(name) > MYSQL_LOCK_NAME_LIMIT:
        name = "asr_plan:" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return name


@contextmanager
def planning_lock(table: TranscriptTable, lock_dir: Path, timeout_s: float = 30.0) -> Iterator[str]:
    """Hold the planning lock of `table` for the block; PlannerBusy when another planner keeps it past timeout_s.
    Yields a description of the lock (for logs)."""
    backend = table.url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        with _mysql_lock(table, timeout_s) as held:
            yield held
    elif backend == "postgresql":
        with _postgres_lock(table, timeout_s) as held:
            yield held
    else:
        database = table.url.database
        directory = Path(database).parent if backend == "sqlite" and database and database != ":memory:" else lock_dir
        path = Path(directory) / f".{table.spec.table}.asr-plan.lock"
        with file_lock(path, timeout_s, busy=lambda: _busy(f"the lock file {path}", timeout_s)) as held:
            yield held


def _busy(what: str, timeout_s: float) -> PlannerBusy:
    return PlannerBusy(f"another planner (new_transcripts_sensor or `asr-pipeline ingest`) held {what} for more than "
                       f"{timeout_s:.0f} s; try again shortly")


def _execute_on_new_connection(table: TranscriptTable, statement: str, params: dict):
    """A connection of its own (the lock belongs to it) and the statement's scalar; with the table's retries, so an
    unreachable database fails like every other query (DatabaseUnavailable)."""
    def attempt():
        conn = table.engine.connect()
        try:
            return conn, conn.execute(sa.text(statement), params).scalar()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise

    return table._with_retries(f"taking the planning lock of {table.spec.table}", attempt)


@contextmanager
def _mysql_lock(table: TranscriptTable, timeout_s: float) -> Iterator[str]:
    name = lock_name(table)
    conn, got = _execute_on_new_connection(table, "SELECT GET_LOCK(:name, :timeout)",
                                           {"name": name, "timeout": max(0, int(round(timeout_s)))})
    try:
        if got != 1:
            raise _busy(f"the database lock {name!r}", timeout_s)
        try:
            yield f"GET_LOCK {name!r}"
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    except BaseException:
        conn.invalidate()  # never hand a connection that may still hold the lock back to the pool
        raise
    finally:
        conn.close()


@contextmanager
def _postgres_lock(table: TranscriptTable, timeout_s: float) -> Iterator[str]:
    name = lock_name(table)
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    conn, got = _execute_on_new_connection(table, "SELECT pg_try_advisory_lock(:key)", {"key": key})
    try:
        deadline = time.monotonic() + timeout_s
        while not got:
            if time.monotonic() >= deadline:
                raise _busy(f"the advisory lock {name!r}", timeout_s)
            time.sleep(0.1)
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        try:
            yield f"pg_advisory_lock {name!r}"
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    except BaseException:
        conn.invalidate()
        raise
    finally:
        conn.close()


@contextmanager
def file_lock(path: Path, timeout_s: float, busy: Callable[[], Exception] | None = None) -> Iterator[str]:
    """An exclusive lock on `path` between processes of this machine (fcntl on POSIX, msvcrt on Windows), waited
    for up to timeout_s (then `busy()` is raised, TimeoutError by default); the OS releases it when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+b")
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise busy() if busy else TimeoutError(f"another process held the lock file {path} for more than "
                                                       f"{timeout_s:.0f} s")
            time.sleep(0.05)
        try:
            yield f"lock file {path}"
        finally:
            _unlock(handle)
    finally:
        handle.close()


def _try_lock(handle) -> bool:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
