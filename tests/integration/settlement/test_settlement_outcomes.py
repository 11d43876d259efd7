"""Outcomes other than SUCCESS: PARTIAL and debt, a signer the contract refuses, a stale nonce."""

from __future__ import annotations

from sqlalchemy import select

from tests.integration.settlement.conftest import MakeEnv
from zgserve.broker.db import repo
from zgserve.broker.settlement import queries
from zgserve.broker.settlement.models import DebtRow
from zgserve.common.money import OG


async def test_fee_beyond_balance_is_partial_then_debt_then_reclaimed(make_env: MakeEnv) -> None:
    async with make_env() as env:
        user = await env.user(OG)
        await env.record(user, 3, fee=OG // 2)  # 1.5 0G of fees, 1 0G deposited
        engine = env.engine()
        report = await engine.settle()
        [entry] = report["settlements"]
        assert (entry["status"], entry["paid"], entry["unpaid"]) == ("partial", str(OG), str(OG // 2))
        async with env.db.connect() as conn:
            assert await repo.user_debt(conn, user.address) == OG // 2  # the broker refuses them now
            assert await repo.total_unsettled(conn) == 0
            [debt] = (await conn.execute(select(DebtRow.amount, DebtRow.cleared))).all()
        assert (int(debt[0]), debt[1]) == (OG // 2, False)
        # An empty account: claiming would only burn a nonce and gas.
        assert (await engine.run_round()).transactions == []
        # The user tops up; the debt is claimed with a new nonce and signature.
        ledger = env.chain.ledger(env.chain.wallet(user.private_key))
        await ledger.transfer_fund(env.provider.address, OG)
        report = await engine.run_round()
        [entry] = report.outcomes
        assert (entry.status, entry.paid, entry.nonce) == ("success", OG // 2, 2)
        async with env.db.connect() as conn:
            assert await repo.user_debt(conn, user.address) == 0
            _, receipts = await queries.entry_detail(conn, user.address, 2) or (None, [])
        assert [r.request_id for r in receipts] == ["debt:1"]
        [account] = await env.inference.get_batch_accounts_by_users([user.address])
        assert account.balance == OG // 2  # 1 + 1 deposited, 1.5 collected
        assert account.nonce == 2


async def test_unacknowledged_signer_keeps_the_fees_and_alerts(make_env: MakeEnv) -> None:
    async with make_env() as env:
        user = await env.user(OG)
        await env.record(user, 2)
        owner = env.chain.inference(env.owner)
        await owner.revoke_tee_signer_acknowledgement(env.provider.address)
        engine = env.engine(failureCooldownSeconds=0)
        report = await engine.settle()
        assert report["transactions"] == []
        assert "NO_TEE_SIGNER" in next(iter(report["skipped"].values()))
        assert engine.metrics.alerts.labels("no_tee_signer")._value.get() == 1
        async with env.db.connect() as conn:
            assert await repo.total_unsettled(conn) > 0
        await owner.acknowledge_tee_signer_by_owner(env.provider.address)
        report = await engine.settle()
        assert [s["status"] for s in report["settlements"]] == ["success"]
        await env.check_exactly_once()


async def test_nonce_continues_above_one_used_elsewhere(make_env: MakeEnv) -> None:
    """An account whose nonce was moved by another settler (e.g. a time-based one) is resynced."""
    async with make_env() as env:
        user = await env.user(OG)
        await env.record(user, 1)
        from zgserve.chain.eip712 import settlement_digest
        from zgserve.chain.types import TEESettlementData

        # Another settler for this provider used a large, time-based nonce.
        digest = settlement_digest(
            chain_id=31337,
            contract=env.inference.address,
            provider=env.provider.address,
            user=user.address,
            total_fee=1,
            requests_hash=b"\x01" * 32,
            nonce=17_000_000_000_000_000,
        )
        sig = bytes.fromhex(env.signer.sign_digest(digest)[2:])
        data = TEESettlementData(
            user.address, env.provider.address, 1, b"\x01" * 32, 17_000_000_000_000_000, sig
        )
        await env.inference.settle_fees_with_tee([data])
        env.initial_balances[user.address.lower()] -= 1
        report = await env.engine().settle()
        [entry] = report["settlements"]
        assert (entry["status"], entry["nonce"]) == ("success", str(17_000_000_000_000_001))
        await env.check_exactly_once()
