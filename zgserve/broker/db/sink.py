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
The same clause makes a batch safe to send again after a broken connection: a
commit whose acknowledgement was lost stores nothing twice.

A sink whose write failed is ``reset`` (its connection dropped) and connects
again on its next write; ``probe`` checks, on a connection of its own, whether
the database takes writes again.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from datetime import UTC
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import text
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


# The table the records go to, not only the server: a store without it is as down as no store.
_PROBE_SQL = "SELECT 1 FROM broker_requests LIMIT 0"


def _insert_sql(placeholders: str) -> str:
    return (
        f"INSERT INTO broker_requests ({_QUOTED}) VALUES ({placeholders}) ON CONFLICT (request_id) DO NOTHING"
    )


class RecordSink(Protocol):
    """A sink whose commits run on the event loop (asyncio drivers)."""

    async def open(self) -> None: ...

    async def write(self, records: list[FeeRecord]) -> None: ...

    async def reset(self) -> None:
        """Drop the connection after a failure; the next write connects again."""
        ...

    async def probe(self) -> None:
        """Raise unless the database answers now (on a connection of its own)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class BlockingSink(Protocol):
    """A sink whose commits block the calling thread (the ``sqlite3`` module)."""

    def open(self) -> None: ...

    def commit(self, records: list[FeeRecord], *, wait: bool = True) -> None: ...

    def reset(self) -> None:
        """Drop the connection after a failure (writer thread only); the next commit reopens it."""
        ...

    def probe(self) -> None:
        """Raise unless the database takes a write lock now (any thread: a connection of its own)."""
        ...

    def close(self) -> None: ...


def is_record_error(exc: BaseException) -> bool:
    """True when the records themselves were refused (sending them again cannot help).

    Anything else (a lost connection, a restarting server, a disk error, a lock held
    elsewhere) means the store is unavailable for now.
    """
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return True
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return False
    # Class 22 (data exception) and 23 (integrity constraint violation), and values asyncpg
    # could not encode (also DataError).
    return isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError)


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
_PROBE_WAIT_S = 1.0
_PG_TIMEOUT_S = 5.0


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
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def probe(self) -> None:
        # Taking the write lock, not only reading, is the point: a lock held elsewhere or a
        # read-only file stops fee records while reads still work.
        conn = sqlite3.connect(self._path, timeout=_PROBE_WAIT_S, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_PROBE_SQL)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

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
        if self._conn is None:
            self.open()  # again, after a failure reset it
        conn = self._conn
        assert conn is not None
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
    """One asyncpg connection used only for inserting records, opened again after a failure."""

    def __init__(self, dsn: str, *, timeout_s: float = _PG_TIMEOUT_S) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        self._conn: Any = None
        placeholders = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        self._sql = _insert_sql(placeholders)

    async def _connect(self) -> Any:
        import asyncpg

        # Bounded: asyncpg waits 60 s to connect and forever for a statement by default, and a
        # charged request waits on this.
        return await asyncpg.connect(self._dsn, timeout=self._timeout_s, command_timeout=self._timeout_s)

    async def open(self) -> None:
        self._conn = await self._connect()

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
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        async with self._conn.transaction():
            await self._conn.executemany(self._sql, rows)

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # no goodbye to a server that may be gone: it would wait for the timeout

    async def probe(self) -> None:
        conn = await self._connect()
        try:
            await conn.execute(_PROBE_SQL)
        finally:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a connection the server already dropped
                await conn.close(timeout=self._timeout_s)


class EngineSink:
    """Through SQLAlchemy: for any other database the engine supports."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def open(self) -> None:
        return None

    async def write(self, records: list[FeeRecord]) -> None:
        async with self._engine.begin() as conn:
            await repo.insert_records(conn, records)

    async def reset(self) -> None:
        return None  # the engine's pool replaces broken connections itself

    async def probe(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(text(_PROBE_SQL))

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
