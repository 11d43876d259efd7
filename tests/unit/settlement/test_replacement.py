"""Replacement pricing, re-signing a journaled transaction, and the journal's candidates (no chain)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from eth_account import Account as EthAccount
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.db import create_engine
from zgserve.broker.db.engine import _alembic_config
from zgserve.broker.settlement import journal
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.journal import PreparedEntry
from zgserve.broker.settlement.receipts import Receipt
from zgserve.broker.settlement.replacement import ReplacementPolicy
from zgserve.chain import ChainClient, NetworkConfig
from zgserve.chain.tx import ContractCall, decode_legacy
from zgserve.chain.types import SettlementResult, SettlementStatus
from zgserve.common.errors import ConfigError

KEY = "0x" + "11" * 32
OTHER_KEY = "0x" + "22" * 32
USER = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"
GWEI = 10**9


def test_price_is_the_network_price_or_the_bump_whichever_is_higher() -> None:
    policy = ReplacementPolicy(after_s=120)
    assert policy.price(100 * GWEI, 10 * GWEI, None) == 112_500_000_000  # +12.5 %
    assert policy.price(100 * GWEI, 300 * GWEI, None) == 300 * GWEI  # the network asks more
    assert policy.price(7, 1, None) == 8  # rounded up, and always above the previous price
    assert policy.price(0, 0, None) == 1


def test_price_stops_at_the_cap_and_gives_up_when_the_bump_does_not_fit() -> None:
    policy = ReplacementPolicy(after_s=120)
    assert policy.price(100 * GWEI, 300 * GWEI, 200 * GWEI) == 200 * GWEI
    assert policy.price(100 * GWEI, 300 * GWEI, 112_500_000_000) == 112_500_000_000
    assert policy.price(100 * GWEI, 300 * GWEI, 110 * GWEI) is None  # below what nodes accept
    with pytest.raises(ValueError, match="bump_bps"):
        ReplacementPolicy(after_s=120, bump_bps=1_000)


def test_deadlines_use_their_own_cap_and_the_chain_cap_bounds_everything() -> None:
    cfg = SettlementConfig.from_settings({"gasPriceCap": 10, "deadlineGasPriceCap": 30})
    policy = cfg.replacement(chain_cap=25)
    assert policy.cap_for(["max_age", "piggyback"]) == 10
    assert policy.cap_for(["piggyback", "refund_unlock"]) == 25
    assert cfg.replacement().cap_for(["manual"]) == 30
    assert SettlementConfig.from_settings({"gasPriceCap": 10}).replacement().cap_for(["manual"]) == 10
    assert SettlementConfig().replacement().cap_for(["manual"]) is None
    assert (policy.after_s, policy.bump_bps) == (120.0, 1250)
    assert policy.due(1000.0, 1120.0)
    assert not policy.due(1000.0, 1119.9)
    assert not policy.due(None, 1e12)  # never broadcast: broadcast it first
    with pytest.raises(ConfigError, match="deadlineGasPriceCap is below gasPriceCap"):
        SettlementConfig.from_settings({"gasPriceCap": 10, "deadlineGasPriceCap": 5})
    with pytest.raises(ConfigError, match="replaceBumpBps"):
        SettlementConfig.from_settings({"replaceBumpBps": 500})


def test_reprice_keeps_everything_but_the_gas_price() -> None:
    client = ChainClient(NetworkConfig(rpc_url="http://127.0.0.1:1", chain_id=31337))
    wallet = client.wallet(KEY)
    call = ContractCall(to="0x" + "ab" * 20, data=bytes(range(70)), value=5)
    first = wallet._sign(call, nonce=42, gas=300_000, gas_price=GWEI)
    second = wallet.reprice(first.raw, 2 * GWEI)
    assert (second.nonce, second.gas, second.gas_price) == (42, 300_000, 2 * GWEI)
    assert second.tx_hash != first.tx_hash
    a, b = decode_legacy(first.raw), decode_legacy(second.raw)
    assert (b.nonce, b.gas, b.to, b.value, b.data, b.chain_id) == (a.nonce, a.gas, a.to, 5, a.data, 31337)
    assert (a.gas_price, b.gas_price) == (GWEI, 2 * GWEI)
    assert EthAccount.recover_transaction(second.raw) == wallet.address
    with pytest.raises(ValueError, match="not signed by"):
        client.wallet(OTHER_KEY).reprice(first.raw, 2 * GWEI)
    with pytest.raises(ValueError, match="not a legacy"):
        decode_legacy(b"\x02" + first.raw)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/j.db")
    yield engine
    await engine.dispose()


def _entry(nonce: int) -> PreparedEntry:
    return PreparedEntry(
        user=USER,
        nonce=nonce,
        total_fee=3,
        requests_hash=b"\x00" * 32,
        signature=b"\x01" * 65,
        trigger="max_age",
        receipts=(Receipt(f"r{nonce}", USER, 1, 1, 3, "s"),),
    )


async def _journal(db: AsyncEngine, tx_hash: str, raw: bytes) -> int:
    async with db.begin() as conn:
        batch_id, _ = await journal.journal_batch(
            conn,
            provider=USER,
            tx_hash=tx_hash,
            tx_nonce=7,
            raw_tx=raw,
            gas_limit=1,
            gas_price=10,
            holder="h",
            entries=[_entry(1)],
        )
    return batch_id


async def test_a_replacement_is_fenced_and_the_mined_candidate_closes_the_batch(db: AsyncEngine) -> None:
    await journal.migrate(db)
    batch_id = await _journal(db, "0x01", b"one")
    async with db.begin() as conn:
        await journal.mark_sent(conn, batch_id, "0x01", at=5.0)
        await journal.mark_sent(conn, batch_id, "0x01", at=9.0)  # the first attempt counts
        assert await journal.journal_replacement(
            conn, batch_id, replaces="0x01", tx_hash="0x02", raw_tx=b"two", gas_price=12
        )
        # A second replacer that read the batch before this one is fenced off.
        assert not await journal.journal_replacement(
            conn, batch_id, replaces="0x01", tx_hash="0x03", raw_tx=b"three", gas_price=13
        )
    async with db.connect() as conn:
        [batch] = await journal.open_batches(conn)
    assert (batch.tx_hashes, batch.tx_hash, batch.tx_nonce) == (["0x01", "0x02"], "0x02", 7)
    assert [(c.gas_price, c.broadcast_at) for c in batch.candidates] == [(10, 5.0), (12, None)]
    assert [e.trigger for e in batch.entries] == ["max_age"]

    results = [SettlementResult(USER, SettlementStatus.SUCCESS, 0)]
    async with db.begin() as conn:  # the first candidate was mined after all
        await journal.record_outcome(
            conn, batch_id, gas_used=1, block_number=1, results=results, tx_hash="0x01"
        )
        row = (await conn.execute(text("SELECT tx_hash, raw_tx, gas_price FROM settlement_batches"))).one()
        assert (row[0], bytes(row[1]), int(row[2])) == ("0x01", b"one", 10)
        assert not await journal.journal_replacement(  # closed: nothing is replaced any more
            conn, batch_id, replaces="0x01", tx_hash="0x04", raw_tx=b"four", gas_price=14
        )
        assert await journal.open_batches(conn) == []


async def test_the_migration_makes_existing_batches_their_own_first_candidate(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "s0001"))
        now = "2025-01-01 00:00:00"
        await conn.execute(
            text(
                "INSERT INTO settlement_batches (provider, state, tx_hash, tx_nonce, raw_tx, gas_limit,"
                " gas_price, holder, sends, created_at, updated_at)"
                " VALUES ('p', 'sent', '0xaa', 3, :raw, 1, '42', 'h', 1, :now, :now)"
            ),
            {"raw": b"raw", "now": now},
        )
    await journal.ensure_schema(db)  # an older journal is brought up to date
    async with db.connect() as conn:
        [batch] = await journal.open_batches(conn)
    assert [(c.tx_hash, c.raw_tx, c.gas_price, c.broadcast_at) for c in batch.candidates] == [
        ("0xaa", b"raw", 42, None)
    ]
