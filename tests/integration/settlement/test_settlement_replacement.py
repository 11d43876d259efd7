"""A stuck settlement transaction is replaced (same sender nonce and call, higher gas price).

The devnet stops mining on its own (``evm_setAutomine false``) so that a transaction stays
in the pool until the test mines a block; ``anvil_setNextBlockBaseFeePerGas`` makes the
network ask more than a transaction pays, so mining leaves it out.
"""

from __future__ import annotations

import signal

import pytest

from tests.integration.settlement.conftest import MakeEnv, SettlementEnv, report_json
from zgserve.broker.settlement.policy import Trigger
from zgserve.common.money import OG


class Clock:
    """The engine's local clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def stuck_batch(env: SettlementEnv, users: int = 2) -> None:
    """Users with fees, and a chain that mines only when the test says so."""
    for _ in range(users):
        await env.record(await env.user(OG), 3)
    await env.chain.request("evm_setAutomine", [False])


async def test_stuck_transaction_is_replaced_then_settled_once(make_env: MakeEnv) -> None:
    async with make_env() as env:
        await stuck_batch(env)
        clock = Clock()
        engine = env.engine(clock=clock, receiptTimeoutSeconds=0.2, replaceAfterSeconds=60)
        report = await engine.run_round(force=Trigger.MANUAL)
        [first] = report.transactions
        assert report.pending_batches == 1
        original = await env.chain.get_transaction(first)
        assert original is not None
        price = int(original["gasPrice"])
        # The network now asks more than the transaction pays: a mined block leaves it out.
        await env.chain.request("anvil_setNextBlockBaseFeePerGas", [hex(price * 2)])
        await env.net.mine()
        assert await env.chain.get_receipt(first) is None

        clock.now += 59  # not due yet: broadcast again unchanged, nothing new starts
        report = await engine.run_round(force=Trigger.MANUAL)
        assert (report.pending_batches, report.transactions) == (1, [])
        assert len(await env.candidates()) == 1

        clock.now += 1
        assert (await engine.run_round()).pending_batches == 1
        [(old, old_price), (new, new_price)] = await env.candidates()
        assert (old, old_price) == (first, price)
        assert new_price >= price * 1125 // 1000
        assert new_price >= await env.chain.gas_price()  # what the network asks now
        assert engine.metrics.replacements.labels("sent")._value.get() == 1
        replacement = await env.chain.get_transaction(new)
        assert replacement is not None
        for key in ("nonce", "from", "to", "input", "gas", "value"):  # only the price differs
            assert replacement[key] == original[key], key
        assert await env.chain.get_transaction(first) is None  # the pool dropped it for the replacement

        await env.net.mine()
        report = await engine.run_round()
        assert [o.status for o in report.reconciled] == ["success", "success"]
        assert report.transactions == []  # closed the batch, started nothing new
        [(state, tx_hash, gas_used)] = await env.batches()
        assert (state, tx_hash) == ("done", new)
        assert gas_used
        assert await env.chain.get_receipt(first) is None
        await env.check_exactly_once()
        assert engine.metrics.replacements.labels("sent")._value.get() == 1


async def test_replacement_stops_at_the_cap_and_alerts_once(make_env: MakeEnv) -> None:
    async with make_env() as env:
        await stuck_batch(env, users=1)
        price = await env.chain.gas_price()
        clock = Clock()
        # Manual settlement is a hard deadline: sent at once; gasPriceCap leaves no room for a bump.
        capped = env.engine(clock=clock, receiptTimeoutSeconds=0.2, replaceAfterSeconds=10, gasPriceCap=price)
        [first] = (await capped.run_round(force=Trigger.MANUAL)).transactions
        for _ in range(2):
            clock.now += 10
            assert (await capped.run_round()).pending_batches == 1
        assert [h for h, _ in await env.candidates()] == [first]  # waits rather than pay more
        assert capped.metrics.alerts.labels("gas_price_cap")._value.get() == 1
        assert capped.metrics.replacements.labels("sent")._value.get() == 0
        await capped.lease.release()

        # A deadline may pay more than normal thrift when the operator allows it.
        engine = env.engine(
            clock=clock,
            receiptTimeoutSeconds=0.2,
            replaceAfterSeconds=10,
            gasPriceCap=price,
            deadlineGasPriceCap=2 * price,
        )
        assert (await engine.run_round()).pending_batches == 1
        [(_, old_price), (new, new_price)] = await env.candidates()
        assert old_price < new_price <= 2 * old_price
        await env.net.mine()
        report = await engine.run_round()
        assert [o.status for o in report.reconciled] == ["success"]
        assert [(b[0], b[1]) for b in await env.batches()] == [("done", new)]
        await env.check_exactly_once()


@pytest.mark.parametrize("crash_at", ["before_replace", "after_replace"])
async def test_killed_during_replacement_reconciles_whichever_candidate_was_mined(
    make_env: MakeEnv, crash_at: str
) -> None:
    """A real ``settle now`` process killed right after journaling a replacement, or after
    broadcasting it; a block is mined; a new process settles every fee exactly once."""
    async with make_env() as env:
        await stuck_batch(env)
        fast = ("-o", "receiptTimeoutSeconds=0.2", "-o", "replaceAfterSeconds=0.1")
        code, out = await env.settle_process("now", *fast)
        assert code == 0, out
        report = report_json(out)
        [first] = report["transactions"]
        assert report["pendingTransactions"] == 1

        code, out = await env.settle_process("now", *fast, crash_at=crash_at)
        assert code == -signal.SIGKILL, out
        [(old, _), (new, _)] = await env.candidates()  # both journaled before the kill
        assert old == first
        await env.net.mine()
        # Only a broadcast replacement can have displaced the first transaction.
        mined, lost = (new, first) if crash_at == "after_replace" else (first, new)
        assert await env.chain.get_receipt(mined) is not None
        assert await env.chain.get_receipt(lost) is None

        code, out = await env.settle_process("now", *fast)
        assert code == 0, out
        report = report_json(out)
        assert report["transactions"] == []
        assert [r["status"] for r in report["reconciled"]] == ["success", "success"]
        assert [(b[0], b[1]) for b in await env.batches()] == [("done", mined)]
        assert len(await env.candidates()) == 2
        await env.check_exactly_once()
