"""The lease and the journal's fences on a real SQLite database (no chain)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.db import create_engine, repo
from zgserve.broker.db.models import FeeRecord
from zgserve.broker.settlement import journal, queries
from zgserve.broker.settlement.journal import PreparedEntry
from zgserve.broker.settlement.lease import Lease
from zgserve.broker.settlement.receipts import Receipt, merkle_root
from zgserve.chain.types import SettlementResult, SettlementStatus

USER = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"
PROVIDER = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/j.db")
    await journal.migrate(engine)
    yield engine
    await engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_lease_expires_and_passes_on(db: AsyncEngine) -> None:
    clock = Clock()
    a = Lease(db, "settler:x", ttl=10, holder="a", clock=clock)
    b = Lease(db, "settler:x", ttl=10, holder="b", clock=clock)
    assert await a.acquire()
    assert not await b.acquire()
    clock.now += 9
    assert await a.acquire()  # renewed until 1019
    clock.now += 9
    assert not await b.acquire()
    clock.now += 2  # a stopped renewing (killed): b takes over
    assert await b.acquire()
    assert b.epoch == 2
    assert not await a.acquire()
    await b.release()
    assert await a.acquire()
    assert await a.current_holder() == ("a", clock.now + 10)


async def seed(db: AsyncEngine, n: int) -> list[queries.UnsettledRow]:
    records = [
        FeeRecord(
            uuid.uuid4().hex,
            USER,
            "m",
            "/v1/chat/completions",
            False,
            3,
            4,
            1,
            2,
            11,
            f"r{i}",
            "complete",
            datetime.now(UTC),
        )
        for i in range(n)
    ]
    async with db.begin() as conn:
        await repo.insert_records(conn, records)
    async with db.connect() as conn:
        return await queries.unsettled_rows(conn, USER)


def entry(rows: list[queries.UnsettledRow], nonce: int) -> PreparedEntry:
    receipts = tuple(Receipt(r.request_id, USER, 3, 4, r.fee, r.response_id or "") for r in rows)
    return PreparedEntry(
        user=USER,
        nonce=nonce,
        total_fee=sum(r.fee for r in rows),
        requests_hash=merkle_root(receipts),
        signature=b"\x01" * 65,
        trigger="manual",
        receipts=receipts,
        request_row_ids={r.request_id: r.row_id for r in rows},
    )


async def write(db: AsyncEngine, e: PreparedEntry, tx: str) -> int:
    async with db.begin() as conn:
        batch_id, _ = await journal.journal_batch(
            conn,
            provider=PROVIDER,
            tx_hash=tx,
            tx_nonce=1,
            raw_tx=b"raw",
            gas_limit=1,
            gas_price=1,
            holder="h",
            entries=[e],
        )
    return batch_id


async def test_a_request_is_claimed_by_one_live_entry_only(db: AsyncEngine) -> None:
    rows = await seed(db, 3)
    first = await write(db, entry(rows, 1), "0x01")
    with pytest.raises(IntegrityError):
        await write(db, entry(rows[:1], 2), "0x02")
    async with db.connect() as conn:
        assert await queries.unsettled_rows(conn, USER) == []  # all claimed, none settled yet
        assert await repo.total_unsettled(conn) == 33
        assert await queries.last_nonces(conn, [USER]) == {USER: 1}
        assert [b.id for b in await journal.open_batches(conn)] == [first]


async def test_outcomes_are_recorded_once_and_failures_give_claims_back(db: AsyncEngine) -> None:
    rows = await seed(db, 2)
    batch = await write(db, entry(rows, 1), "0x01")
    ok = [SettlementResult(USER, SettlementStatus.PARTIAL, 5)]
    async with db.begin() as conn:
        outcomes = await journal.record_outcome(conn, batch, gas_used=1, block_number=1, results=ok)
    assert outcomes is not None
    assert (outcomes[0].paid, outcomes[0].unpaid) == (17, 5)
    async with db.begin() as conn:  # a second recorder (another process) is fenced off
        assert await journal.record_outcome(conn, batch, gas_used=1, block_number=1, results=ok) is None
    async with db.connect() as conn:
        assert await repo.total_unsettled(conn) == 0
        assert await repo.user_debt(conn, USER) == 5
        claimable = await queries.claimable_users(conn)
    assert claimable[USER].debts == [(1, 1, 5)]

    more = await seed(db, 1)
    failing = await write(db, entry(more, 2), "0x02")
    async with db.begin() as conn:
        bad = [SettlementResult(USER, SettlementStatus.INVALID_SIGNATURE, 0)]
        await journal.record_outcome(conn, failing, gas_used=1, block_number=2, results=bad)
    async with db.connect() as conn:
        assert [r.request_id for r in await queries.unsettled_rows(conn, USER)] == [more[0].request_id]
        history, total = await queries.history(conn, user=USER)
    assert total == 2
    assert [h.status for h in history] == ["invalid_signature", "partial"]
