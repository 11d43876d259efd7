"""Migrations, idempotent inserts and exact sums, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.db import FeeRecord, create_engine, migrate, repo
from zgserve.broker.db.models import utcnow

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
