"""Migrations, idempotent inserts, exact sums and the record writer's recovery, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.db import FeeRecord, create_engine, migrate, repo
from zgserve.broker.db.models import utcnow
from zgserve.broker.db.sink import BlockingSink, sink_for
from zgserve.broker.errors import RecordFailed, StorageUnavailable
from zgserve.broker.records import RecordWriter
from zgserve.common.net import free_port

BIG = 2**70  # beyond int64: exercises NUMERIC(78,0) and the SQLite text mapping


def record(i: int, user: str = "0xAbC", fee: int = BIG) -> FeeRecord:
    return FeeRecord(
        f"req-{i}",
        user.lower(),
        "m",
        "/chat/completions",
        False,
        10,
        5,
        1,
        2,
        fee + i,
        f"chatcmpl-{i}",
        "complete",
        utcnow(),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        eng = create_engine(f"sqlite+aiosqlite:///{tmp_path}/broker.db")
        await migrate(eng)
        yield eng
        await eng.dispose()
        return
    async with request.getfixturevalue("pg_database")() as url:
        eng = create_engine(url)
        await migrate(eng)
        await migrate(eng)  # second run is a no-op
        yield eng
        await eng.dispose()


async def test_records_sums_and_settlement_linkage(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await repo.insert_records(conn, [record(i) for i in range(5)] + [record(9, user="0xdef", fee=1)])
        await repo.insert_records(conn, [record(0)])  # same request id: ignored
    async with engine.connect() as conn:
        assert await repo.unsettled_fee(conn, "0xABC") == 5 * BIG + 10
        assert await repo.unsettled_by_user(conn) == {"0xabc": 5 * BIG + 10, "0xdef": 10}
        pending = await repo.unsettled_requests(conn, "0xabc", limit=3)
        assert [r.request_id for r in pending] == ["req-0", "req-1", "req-2"]
        assert pending[0].fee == BIG
        assert pending[0].created_at.tzinfo is not None
    async with engine.begin() as conn:
        assert (
            await repo.mark_settled(conn, [r.id for r in pending], settlement_id=7, settlement_nonce=BIG) == 3
        )
        assert (
            await repo.mark_settled(conn, [r.id for r in pending], settlement_id=8, settlement_nonce=1) == 0
        )
        await repo.set_debt(conn, "0xAbC", 42)
        await repo.save_chain_state(
            conn, "0xabc", balance=BIG, pending_refund=1, chain_nonce=BIG, generation=2, acknowledged=True
        )
    async with engine.connect() as conn:
        assert await repo.unsettled_fee(conn, "0xabc") == 2 * BIG + 7
        assert await repo.total_unsettled(conn) == 2 * BIG + 7 + 10
        page = await repo.list_requests(conn, user="0xabc", settled=True, limit=2, order="asc")
        assert page.total == 3
        assert page.fee == 3 * BIG + 3
        assert len(page.items) == 2
        assert page.items[0].settlement_nonce == BIG
        assert page.items[0].settlement_id == 7
        user = await repo.get_user(conn, "0xABC")
        assert user is not None
        assert user.debt == 42
        assert user.balance == BIG
        assert user.generation == 2
        assert await repo.user_debt(conn, "0xnobody") == 0


class _Flaky:
    """Wraps a sink: the first ``lose_ack`` writes commit but then fail (the acknowledgement is lost),
    and while ``down`` every write and probe fails as if the server were gone."""

    def __init__(self, inner: Any, lose_ack: int = 0) -> None:
        self.inner = inner
        self.lose_ack = lose_ack
        self.down = False
        self.resets = 0

    def _gate(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the database is down")

    def _after_commit(self) -> None:
        if self.lose_ack:
            self.lose_ack -= 1
            raise ConnectionResetError("connection reset after COMMIT")


class _FlakyAsync(_Flaky):
    async def open(self) -> None:
        await self.inner.open()

    async def write(self, records: list[FeeRecord]) -> None:
        self._gate()
        await self.inner.write(records)
        self._after_commit()

    async def reset(self) -> None:
        self.resets += 1
        await self.inner.reset()

    async def probe(self) -> None:
        self._gate()
        await self.inner.probe()

    async def close(self) -> None:
        await self.inner.close()


class _FlakyBlocking(_Flaky):
    def open(self) -> None:
        self.inner.open()

    def commit(self, records: list[FeeRecord], *, wait: bool = True) -> None:
        self._gate()
        self.inner.commit(records, wait=wait)
        self._after_commit()

    def reset(self) -> None:
        self.resets += 1
        self.inner.reset()

    def probe(self) -> None:
        self._gate()
        self.inner.probe()

    def close(self) -> None:
        self.inner.close()


def _flaky(engine: AsyncEngine, lose_ack: int = 0) -> _FlakyAsync | _FlakyBlocking:
    inner = sink_for(engine)
    if isinstance(inner, BlockingSink):
        return _FlakyBlocking(inner, lose_ack)
    return _FlakyAsync(inner, lose_ack)


async def _request_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [r[0] for r in await conn.execute(text("SELECT request_id FROM broker_requests"))]


async def test_writer_retries_a_lost_acknowledgement_without_duplicating(engine: AsyncEngine) -> None:
    sink = _flaky(engine, lose_ack=1)
    writer = RecordWriter(sink, retry_s=2)
    await writer.start()
    try:
        await writer.write(record(1))  # committed, "failed", sent again: stored once
        await asyncio.gather(*(writer.write(record(i)) for i in range(2, 6)))
        writer.ensure_available()
    finally:
        await writer.stop()
    assert sink.resets == 1
    assert sorted(await _request_ids(engine)) == [f"req-{i}" for i in range(1, 6)]


async def test_writer_refuses_while_down_and_recovers_on_its_own(engine: AsyncEngine) -> None:
    sink = _flaky(engine)
    writer = RecordWriter(sink, retry_s=0.2, probe_max_s=0.5)
    await writer.start()
    try:
        await writer.write(record(1))
        sink.down = True
        with pytest.raises(RecordFailed):
            await writer.write(record(2))
        with pytest.raises(StorageUnavailable):
            writer.ensure_available()  # no I/O: known from the failed write
        with pytest.raises(ConnectionRefusedError):
            await writer.probe()
        sink.down = False
        for _ in range(100):  # the background probe notices by itself
            if writer.down_reason is None:
                break
            await asyncio.sleep(0.05)
        writer.ensure_available()
        await writer.write(record(3))
    finally:
        await writer.stop()
    assert sorted(await _request_ids(engine)) == ["req-1", "req-3"]


async def test_pool_survives_a_refused_connection_as_a_sqlalchemy_error(tmp_path: Path) -> None:
    # A database that is down raises SQLAlchemy's error, not a bare OSError that callers miss.
    eng = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")
    try:
        with pytest.raises(SQLAlchemyError):
            async with eng.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await eng.dispose()
