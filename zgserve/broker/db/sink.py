"""The hot-path insert of fee records, straight through the database driver.

Everything else goes through SQLAlchemy (:mod:`repo`); this one statement runs once
per charged request, so it skips the ORM/async adapter layers:

* SQLite: one ``sqlite3`` connection owned by one thread; a batch is one
  ``executemany`` and one commit, one thread hop.
* PostgreSQL: one asyncpg connection; a batch is one ``executemany`` in a transaction.

Both write exactly what :func:`repo.insert_records` writes (same columns, same
encodings, ``ON CONFLICT (request_id) DO NOTHING``), so rows are indistinguishable.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from decimal import Decimal
from typing import Any, Protocol

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
    async def open(self) -> None: ...

    async def write(self, records: list[FeeRecord]) -> None: ...

    async def close(self) -> None: ...


class SqliteSink:
    """A dedicated writer connection on its own thread."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-sqlite-writer")
        self._conn: sqlite3.Connection | None = None
        placeholders = ", ".join("?" for _ in COLUMNS)
        self._sql = _insert_sql(placeholders)

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        assert self._conn is not None
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    async def write(self, records: list[FeeRecord]) -> None:
        rows = [
            (
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
            for r in records
        ]
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write, rows)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)


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


def sink_for(engine: AsyncEngine, *, sqlite_synchronous: str = "FULL") -> RecordSink:
    """The fastest sink for the engine's database."""
    url = make_url(engine.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return SqliteSink(url.database, sqlite_synchronous)
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresSink(dsn)
    return EngineSink(engine)
