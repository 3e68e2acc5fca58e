"""Reading (and, for the demo and tests, creating) the transcript table through SQLAlchemy.

Table and column names are configuration, so they are validated as identifiers and quoted by SQLAlchemy;
every value travels as a bound parameter.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from asr_pipeline.core.errors import ConfigError, DatabaseUnavailable
from asr_pipeline.core.settings import validate_identifier

log = logging.getLogger(__name__)


def prepare_url(url: str | URL) -> URL:
    """Parse the URL and make MySQL connections speak utf8mb4, which Korean transcripts need."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError; never echo the URL, it may hold a password
        raise ConfigError(f"ASR_DB_URL is not a valid SQLAlchemy URL ({type(exc).__name__})") from None
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def masked(url: str | URL) -> str:
    """The URL as it may be shown in logs and the UI: password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def _sqlite_functions(dbapi_connection, _record) -> None:
    """SQLite lacks CRC32; give it MySQL's (over the UTF-8 bytes), so fingerprints are computed in SQL there too."""
    dbapi_connection.create_function(
        "crc32", 1, lambda text: None if text is None else zlib.crc32(str(text).encode("utf-8")), deterministic=True)


@dataclass(frozen=True)
class TableSpec:
    table: str = "training_datas"
    id_column: str = "id"
    audio_column: str = "raw_data"
    transcript_column: str = "transcript"
    updated_column: str | None = "updated_at"  # used for change detection when the table has it

    def __post_init__(self) -> None:
        if self.updated_column is not None:
            validate_identifier(self.updated_column, "updated column (ASR_DB_UPDATED_COLUMN)")
        validate_identifier(self.table, "table name (ASR_DB_TABLE)")
        validate_identifier(self.id_column, "id column (ASR_DB_ID_COLUMN)")
        validate_identifier(self.audio_column, "audio column (ASR_DB_AUDIO_COLUMN)")
        validate_identifier(self.transcript_column, "transcript column (ASR_DB_TRANSCRIPT_COLUMN)")

    def table_clause(self) -> sa.TableClause:
        return sa.table(
            self.table, sa.column(self.id_column), sa.column(self.audio_column), sa.column(self.transcript_column)
        )


class TranscriptTable:
    """The source table: (id, audio path, transcript) rows, read in id order in pages."""

    def __init__(self, url: str | URL, spec: TableSpec | None = None, retries: int = 3, backoff_s: float = 1.0):
        self.url = prepare_url(url)
        self.spec = spec or TableSpec()
        self.retries = retries
        self.backoff_s = backoff_s
        self._engine: sa.Engine | None = None
        self._has_updated_column: bool | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.url, pool_pre_ping=True)
            if self.url.get_backend_name() == "sqlite":
                sa.event.listen(self._engine, "connect", _sqlite_functions)
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _with_retries(self, what: str, fn):
        """Transient errors (server restarting, network blip) are retried with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except sa.exc.OperationalError as exc:
                if attempt == self.retries:
                    raise DatabaseUnavailable(
                        f"{what} failed after {self.retries + 1} attempts against {masked(self.url)}: "
                        f"{type(exc.orig).__name__}: {exc.orig}"
                    ) from None
                delay = self.backoff_s * 2**attempt
                log.warning("%s failed (%s); retrying in %.1f s", what, type(exc.orig).__name__, delay)
                time.sleep(delay)

    def read_rows(self, after_id: int | None = None, page_size: int = 5000,
                  last_id: int | None = None) -> Iterator[dict]:
        """Rows with after_id < id <= last_id, in id order, one indexed range query a page (no OFFSET scans)."""
        spec, t = self.spec, self.spec.table_clause()
        id_col, audio_col, text_col = t.c[spec.id_column], t.c[spec.audio_column], t.c[spec.transcript_column]
        last = after_id
        while True:
            query = sa.select(id_col, audio_col, text_col).order_by(id_col).limit(page_size)
            if last is not None:
                query = query.where(id_col > sa.bindparam("after", last))
            if last_id is not None:
                query = query.where(id_col <= sa.bindparam("upto", last_id))

            def fetch(q=query):
                with self.engine.connect() as conn:
                    return conn.execute(q).all()

            page = self._with_retries(f"reading {spec.table}", fetch)
            for row_id, audio, text in page:
                yield {"id": int(row_id), "audio_path": audio, "transcript": text}
            if len(page) < page_size:
                return
            last = int(page[-1][0])

    def read_range(self, first_id: int, last_id: int, page_size: int = 5000) -> Iterator[dict]:
        """The rows of one ingest batch: first_id <= id <= last_id."""
        return self.read_rows(after_id=first_id - 1, last_id=last_id, page_size=page_size)

    # --- ingest batches: boundaries and fingerprints, each an indexed range query ------------------------------
    def _scalar(self, what: str, query):
        def fetch():
            with self.engine.connect() as conn:
                return conn.execute(query).scalar()

        return self._with_retries(what, fetch)

    def first_id_after(self, after_id: int) -> int | None:
        id_col = self.spec.table_clause().c[self.spec.id_column]
        query = sa.select(sa.func.min(id_col)).where(id_col > sa.bindparam("after", after_id))
        value = self._scalar(f"looking for new rows in {self.spec.table}", query)
        return None if value is None else int(value)

    def nth_id_after(self, after_id: int, n: int) -> int | None:
        """The id of the n-th row after after_id, or None when fewer than n rows follow (LIMIT 1 OFFSET n-1 on the
        primary key: O(n), whatever the table's size)."""
        id_col = self.spec.table_clause().c[self.spec.id_column]
        nth = (sa.select(id_col).where(id_col > sa.bindparam("after", after_id)).order_by(id_col)
               .limit(1).offset(n - 1))
        value = self._scalar(f"planning batches of {self.spec.table}", nth)
        return None if value is None else int(value)

    def max_id_after(self, after_id: int, upto: int | None = None) -> int | None:
        id_col = self.spec.table_clause().c[self.spec.id_column]
        query = sa.select(sa.func.max(id_col)).where(id_col > sa.bindparam("after", after_id))
        if upto is not None:
            query = query.where(id_col <= sa.bindparam("upto", upto))
        value = self._scalar(f"looking for new rows in {self.spec.table}", query)
        return None if value is None else int(value)

    def live_ids(self, first_id: int, last_id: int) -> set[int]:
        """The ids present in first..last: one index range scan of the id column only (no row data)."""
        id_col = self.spec.table_clause().c[self.spec.id_column]
        query = sa.select(id_col).where(id_col.between(sa.bindparam("first", first_id), sa.bindparam("last", last_id)))

        def fetch():
            with self.engine.connect() as conn:
                return {int(v) for v in conn.execute(query).scalars()}

        return self._with_retries(f"reading the ids {first_id}-{last_id} of {self.spec.table}", fetch)

    def updated_column(self) -> str | None:
        """The change-tracking column when the table has one (spec.updated_column), else None."""
        if self.spec.updated_column is None:
            return None
        if self._has_updated_column is None:
            columns = self._with_retries(f"inspecting {self.spec.table}",
                                         lambda: sa.inspect(self.engine).get_columns(self.spec.table))
            self._has_updated_column = any(c["name"] == self.spec.updated_column for c in columns)
        return self.spec.updated_column if self._has_updated_column else None

    def batch_fingerprint(self, first_id: int, last_id: int) -> str:
        """Changes when a row of the batch is inserted, updated or deleted.

        COUNT(*) plus MAX(updated_at) when the table has that column, otherwise plus SUM(CRC32(path|transcript)),
        computed by the database over the batch's id range.
        """
        spec = self.spec
        updated = self.updated_column()
        columns = [sa.column(spec.id_column), sa.column(spec.audio_column), sa.column(spec.transcript_column)]
        if updated:
            columns.append(sa.column(updated))
        t = sa.table(spec.table, *columns)
        id_col = t.c[spec.id_column]
        if updated:
            digest = sa.func.max(t.c[updated])
        else:
            text = sa.func.coalesce(t.c[spec.audio_column], "").concat("|").concat(
                sa.func.coalesce(t.c[spec.transcript_column], ""))
            digest = sa.func.sum(sa.func.crc32(text))
        query = sa.select(sa.func.count(), digest).where(
            id_col.between(sa.bindparam("first", first_id), sa.bindparam("last", last_id)))

        def fetch():
            with self.engine.connect() as conn:
                return conn.execute(query).one()

        count, value = self._with_retries(f"fingerprinting {spec.table} ids {first_id}-{last_id}", fetch)
        return f"{int(count)}:{value if value is not None else 0}"

    def count(self) -> int:
        t = self.spec.table_clause()

        def fetch():
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())

        return self._with_retries(f"counting {self.spec.table}", fetch)

    # --- used by the demo and the tests to make a table in the notebook's shape -------------------------------
    def create_table(self) -> sa.Table:
        spec = self.spec
        metadata = sa.MetaData()
        table = sa.Table(
            spec.table,
            metadata,
            sa.Column(spec.id_column, sa.Integer, primary_key=True, autoincrement=True),
            sa.Column(spec.audio_column, sa.String(1024), nullable=True),
            sa.Column(spec.transcript_column, sa.Text, nullable=True),
            mysql_charset="utf8mb4",
        )
        metadata.create_all(self.engine)
        return table

    def insert_rows(self, rows: Sequence[dict]) -> None:
        """rows: dicts with audio_path, transcript and optionally id."""
        table = self.create_table()
        spec = self.spec
        values = [
            {
                **({spec.id_column: r["id"]} if "id" in r else {}),
                spec.audio_column: r["audio_path"],
                spec.transcript_column: r["transcript"],
            }
            for r in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(sa.insert(table), values)
