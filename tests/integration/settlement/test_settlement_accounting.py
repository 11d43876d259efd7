"""Fees recorded for N requests of M users reach the provider on-chain, to the neuron, once."""

from __future__ import annotations

import asyncio

from tests.integration.settlement.conftest import MakeEnv
from zgserve.broker.db import repo
from zgserve.common.money import OG


async def test_fees_of_n_requests_of_m_users_reach_the_provider_exactly(make_env: MakeEnv) -> None:
    async with make_env() as env:
        users = [await env.user(2 * OG) for _ in range(5)]
        for i, user in enumerate(users):
            await env.record(user, 3 + i, tokens=(10 + i, 7 * i + 1))
        before = await env.chain.balance(env.provider.address)
        engine = env.engine()
        report = await engine.settle()
        assert report["leader"] is True
        assert len(report["transactions"]) == 1  # five users, one transaction
        assert {s["status"] for s in report["settlements"]} == {"success"}
        total = await env.check_exactly_once()
        [(state, tx_hash, _)] = await env.batches()
        assert state == "done"
        receipt = await env.chain.get_receipt(tx_hash)
        assert receipt is not None
        after = await env.chain.balance(env.provider.address)
        assert after - before + receipt.fee == total
        # Nothing left: another round sends nothing.
        again = await engine.settle()
        assert again["transactions"] == []


async def test_more_than_fifty_users_go_in_several_transactions_none_twice(make_env: MakeEnv) -> None:
    async with make_env() as env:
        users = [await env.user(OG) for _ in range(53)]
        for user in users:
            await env.record(user, 2)
        report = await env.engine().settle()
        assert len(report["transactions"]) == 2
        settled_users = [s["user"] for s in report["settlements"]]
        assert len(settled_users) == len(set(settled_users)) == 53
        await env.check_exactly_once()


async def test_small_fresh_fees_wait_and_a_deadline_sends_everyone_worth_it(make_env: MakeEnv) -> None:
    async with make_env() as env:
        small = [await env.user(2 * OG) for _ in range(3)]
        for user in small:
            await env.record(user, 2)  # ~17 gwei-scale fees: far below their gas
        worth = await env.user(2 * OG)
        await env.record(worth, 1, fee=OG // 100)  # worth its gas, not due
        engine = env.engine()
        report = await engine.run_round()
        assert report.transactions == []
        heavy = await env.user(2 * OG)
        await env.record(heavy, 1, fee=OG + 1)  # over half of what heavy deposited
        report = await engine.run_round()
        assert len(report.transactions) == 1
        settled = {o.user for o in report.outcomes}
        assert settled == {heavy.address.lower(), worth.address.lower()}  # tiny fees are left to grow
        async with env.db.connect() as conn:
            left = await repo.unsettled_by_user(conn)
        assert set(left) == {u.address.lower() for u in small}


async def test_settle_on_shutdown_takes_everything(make_env: MakeEnv) -> None:
    async with make_env() as env:
        user = await env.user(2 * OG)
        await env.record(user, 3)  # tiny and fresh: no deadline
        engine = env.engine(settleOnShutdown=True, intervalSeconds=3600)
        await engine.start()
        await asyncio.sleep(0.2)
        assert await env.batches() == []
        await engine.stop()
        await env.check_exactly_once()
        assert engine.metrics.lease_held._value.get() == 0
