"""Fencing and wallet nonces across settler replicas that share one provider key (PostgreSQL)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.integration.settlement.conftest import TEST_TX_POLICY, MakeEnv
from zgserve.broker.settlement.lease import Lease
from zgserve.broker.settlement.policy import Trigger
from zgserve.chain import ChainClient
from zgserve.common.money import OG

pytestmark = pytest.mark.postgres


class OvertakenLease(Lease):
    """A holder that stalls just before its ``at``-th fenced write while a successor takes over.

    What a replica paused (GC, a frozen VM, a slow disk) past its lease's expiry sees when
    it wakes up in the middle of a round, after it had checked the lease at the round's start.
    """

    def __init__(self, *args: Any, successor: Lease, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.successor = successor
        self.at = at
        self.fences = 0

    async def fence(self, conn: AsyncConnection) -> None:
        self.fences += 1
        if self.fences == self.at:
            assert await self.successor.acquire()
        await super().fence(conn)


async def _tx_count(env: Any, block: str) -> int:
    value = await env.chain.request("eth_getTransactionCount", [env.provider.address, block])
    return int(value, 16) if isinstance(value, str) else int(value)


@pytest.mark.parametrize("overtaken_at", ["journal", "broadcast"])
async def test_an_overtaken_settler_writes_and_sends_nothing(make_env: MakeEnv, overtaken_at: str) -> None:
    async with make_env(db="postgres") as env:
        users = [await env.user(OG) for _ in range(2)]
        for user in users:
            await env.record(user, 3)
        name = f"settler:{env.provider.address.lower()}"
        # The successor's clock runs ahead: to it, A's lease has long expired.
        b_lease = Lease(env.db, name, ttl=1.0, holder="replica-b", clock=lambda: time.time() + 60)
        a_lease = OvertakenLease(
            env.db,
            name,
            ttl=1.0,
            holder="replica-a",
            successor=b_lease,
            at={"journal": 1, "broadcast": 2}[overtaken_at],
        )
        a, b = env.engine(lease=a_lease), env.engine(lease=b_lease)
        sent_before = await _tx_count(env, "pending")

        report = await a.run_round(force=Trigger.MANUAL)
        assert not report.leader
        assert report.transactions == []
        assert await _tx_count(env, "pending") == sent_before  # nothing broadcast by A
        assert a_lease.epoch is None
        journaled = await env.batches()
        assert [state for state, _, _ in journaled] == ([] if overtaken_at == "journal" else ["signed"])
        assert not (await a.run_round(force=Trigger.MANUAL)).leader  # B holds it

        report_b = await b.settle()
        assert report_b["leader"]
        settled = [*report_b["settlements"], *report_b["reconciled"]]
        assert sorted(s["user"].lower() for s in settled) == sorted(u.address.lower() for u in users)
        assert {s["status"] for s in settled} == {"success"}
        assert [state for state, _, _ in await env.batches()] == ["done"]
        await env.check_exactly_once()


async def test_replicas_with_their_own_nonce_sequences_hand_the_key_over(make_env: MakeEnv) -> None:
    """Each replica's client counts nonces itself; a new lease holder re-reads the node's count."""
    async with make_env(db="postgres") as env:
        other = ChainClient(env.net.network_config(TEST_TX_POLICY), abis=env.net.chain.abis)
        await other.open()
        try:
            a, b = env.engine(), env.engine(chain=other)
            user = await env.user(OG)
            # A, B, A again: A's local sequence is behind after B sent (the "nonce too low" case).
            for settler in (a, b, a, b):
                await env.record(user, 2)
                report = await settler.settle()
                assert report["leader"], report
                assert [s["status"] for s in report["settlements"]] == ["success"], report
                await settler.lease.release()
            await env.check_exactly_once()
        finally:
            await other.close()
