"""The hot-path insert of fee records, straight through the database driver.

Everything else goes through SQLAlchemy (:mod:`repo`); this one statement runs once
per charged request, so it skips the ORM/async adapter layers:

* SQLite: one ``sqlite3`` connection; a batch is one ``executemany`` and one
  commit (a single record, one autocommitted INSERT). The commit blocks, so
  :class:`~zgserve.broker.records.RecordWriter` runs it on its writer thread, or
  on the event loop when that has nothing else to do.
* PostgreSQL: one asyncpg connection; a batch is one ``executemany`` in a transaction.

Both write exactly what :func:`repo.insert_records` writes (same columns, same
encodings, ``ON CONFLICT (request_id) DO NOTHING``), so rows are indistinguishable.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.db import repo
from zgserve.broker.db.models import FeeRecord

COLUMNS = (
    "request_id",
    "user",
    "model",
    "endpoint",
    "stream",
    "input_tokens",
    "output_tokens",
    "input_price",
    "output_price",
    "fee",
    "response_id",
    "status",
    "created_at",
    "settled",
)
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)


def _insert_sql(placeholders: str) -> str:
    return (
        f"INSERT INTO broker_requests ({_QUOTED}) VALUES ({placeholders}) ON CONFLICT (request_id) DO NOTHING"
    )


class RecordSink(Protocol):
    """A sink whose commits run on the event loop (asyncio drivers)."""

    async def open(self) -> None: ...

    async def write(self, records: list[FeeRecord]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class BlockingSink(Protocol):
    """A sink whose commits block the calling thread (the ``sqlite3`` module)."""

    def open(self) -> None: ...

    def commit(self, records: list[FeeRecord], *, wait: bool = True) -> None: ...

    def close(self) -> None: ...


def _sqlite_row(r: FeeRecord) -> tuple[Any, ...]:
    return (
        r.request_id,
        r.user,
        r.model,
        r.endpoint,
        int(r.stream),
        r.input_tokens,
        r.output_tokens,
        str(r.input_price),
        str(r.output_price),
        str(r.fee),
        r.response_id,
        r.status,
        # SQLAlchemy's SQLite DATETIME text format, in UTC.
        r.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        0,
    )


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_BUSY_WAIT_S = 10.0  # as long as the engine's connections wait (busy_timeout)


class SinkBusy(sqlite3.OperationalError):
    """The database is locked by another connection and ``commit`` was told not to wait."""


class SqliteSink:
    """A dedicated writer connection; :class:`RecordWriter` decides on which thread it commits.

    The connection is used by one thread at a time (the writer guarantees it), not always
    the same one, hence ``check_same_thread=False``. Its busy timeout is 0 so that a
    commit on the event loop never sleeps there waiting for a lock whose holder may need
    that loop to finish; ``commit(wait=True)`` (the writer thread) waits instead.
    """

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        placeholders = ", ".join("?" for _ in COLUMNS)
        self._sql = _insert_sql(placeholders)

    def open(self) -> None:
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        self._conn = conn

    def commit(self, records: list[FeeRecord], *, wait: bool = True) -> None:
        """Insert ``records`` in one transaction; returns once it is committed.

        While another connection holds the write lock: retried for up to 10 s when ``wait``,
        else :class:`SinkBusy` at once (nothing was written).
        """
        delay, deadline = 0.001, time.monotonic() + _BUSY_WAIT_S
        while True:
            try:
                self._insert(records)
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _BUSY:
                    raise
                if not wait:
                    raise SinkBusy(str(exc)) from None
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _insert(self, records: list[FeeRecord]) -> None:
        conn = self._conn
        if conn is None:
            raise sqlite3.ProgrammingError("the record sink is not open")
        if len(records) == 1:
            # Autocommit mode: a single INSERT is its own transaction, no BEGIN/COMMIT round.
            conn.execute(self._sql, _sqlite_row(records[0]))
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._sql, [_sqlite_row(r) for r in records])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PostgresSink:
    """One asyncpg connection used only for inserting records."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        placeholders = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        self._sql = _insert_sql(placeholders)

    async def open(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        self._conn = await asyncpg.connect(self._dsn)

    async def write(self, records: list[FeeRecord]) -> None:
        rows = [
            (
                r.request_id,
                r.user,
                r.model,
                r.endpoint,
                r.stream,
                r.input_tokens,
                r.output_tokens,
                Decimal(r.input_price),
                Decimal(r.output_price),
                Decimal(r.fee),
                r.response_id,
                r.status,
                r.created_at,
                False,
            )
            for r in records
        ]
        async with self._conn.transaction():
            await self._conn.executemany(self._sql, rows)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class EngineSink:
    """Through SQLAlchemy: for any other database the engine supports."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def open(self) -> None:
        return None

    async def write(self, records: list[FeeRecord]) -> None:
        async with self._engine.begin() as conn:
            await repo.insert_records(conn, records)

    async def close(self) -> None:
        return None


def sink_for(engine: AsyncEngine, *, sqlite_synchronous: str = "FULL") -> RecordSink | BlockingSink:
    """The fastest sink for the engine's database."""
    url = make_url(engine.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return SqliteSink(url.database, sqlite_synchronous)
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresSink(dsn)
    return EngineSink(engine)
