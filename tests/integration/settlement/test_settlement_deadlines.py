"""Deadlines with a real broker: balance exhaustion (PARTIAL, debt, refusal) and the refund race."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from tests.integration.settlement.conftest import engine_deps
from tests.integration.settlement.test_settlement_broker import chat
from zgserve.broker.db import repo
from zgserve.broker.db.models import FeeRecord
from zgserve.broker.settlement import queries
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet

OUTPUT_PRICE = 10**16  # 0.01 0G per output token: a request costs up to ~0.16 0G


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 45.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_balance_exhaustion_settles_in_time_then_partial_debt_refused_until_paid(
    start_broker: StartBroker, funded_user: FundedUser, private_devnet: Devnet
) -> None:
    net = private_devnet
    async with (
        start_broker(on=net, outputPrice=OUTPUT_PRICE, deps=engine_deps()) as broker,
        aiohttp.ClientSession() as s,
    ):
        core, provider = broker.core, broker.provider.address
        user = await funded_user(provider, amount=OG, on=net)
        auth = make_token(user.private_key, provider)
        served = 0
        for _ in range(40):  # spend until the guard refuses
            status, body = await chat(s, broker.url, auth, stream=False)
            if status != 200:
                assert (status, body["error"]["code"]) == (402, "insufficient_balance")
                break
            served += 1
            await asyncio.sleep(0.1)
        assert served >= 6
        await core.settlement.stop(settle=False)  # hold still while we look
        # The engine kept up on its own (deposit-share deadline): it settled while the user spent,
        # and never let fees outgrow the balance (no PARTIAL).
        async with core.db.connect() as conn:
            history, _ = await queries.history(conn, user=user.address)
            left = await repo.unsettled_fee(conn, user.address)
        assert history
        assert {h.status for h in history} == {"success"}
        [account] = await core.inference.get_batch_accounts_by_users([user.address])
        assert left <= account.balance
        # What is left is below the share deadline; the operator settles it by hand.
        await core.settlement.settle()
        async with core.db.connect() as conn:
            recorded = (await repo.list_requests(conn, user=user.address, limit=1000)).fee
            assert await repo.unsettled_fee(conn, user.address) == 0
        [account] = await core.inference.get_batch_accounts_by_users([user.address])
        assert OG - account.balance == recorded  # every fee collected, none twice
        await core.settlement.start()

        # A fee beyond the balance (as a second broker process on this database could record).
        beyond = account.balance + OG // 10
        async with core.db.begin() as conn:
            await repo.insert_records(conn, [fee_record(user.address, beyond)])

        async def in_debt() -> bool:
            async with core.db.connect() as conn:
                return await repo.user_debt(conn, user.address) == OG // 10

        await eventually(in_debt)
        status, body = await chat(s, broker.url, auth, stream=True)
        assert (status, body["error"]["code"]) == (402, "outstanding_debt")

        ledger = core.chain.ledger(core.chain.wallet(user.private_key))
        await ledger.transfer_fund(provider, OG)  # top up: the engine claims the debt

        async def paid() -> bool:
            async with core.db.connect() as conn:
                return await repo.user_debt(conn, user.address) == 0

        await eventually(paid)
        await asyncio.sleep(0.6)  # the guard and account cache re-read within their TTL
        status, _ = await chat(s, broker.url, auth, stream=False)
        assert status == 200
        [account] = await core.inference.get_batch_accounts_by_users([user.address])
        assert 2 * OG - account.balance == recorded + beyond


def fee_record(user: str, fee: int) -> FeeRecord:
    return FeeRecord(
        request_id=uuid.uuid4().hex,
        user=user.lower(),
        model="fake-model",
        endpoint="/v1/chat/completions",
        stream=False,
        input_tokens=1,
        output_tokens=1,
        input_price=fee - 1,
        output_price=1,
        fee=fee,
        response_id=None,
        status="complete",
        created_at=datetime.now(UTC),
    )


async def test_refund_race_settles_before_the_refund_unlocks(
    start_broker: StartBroker, funded_user: FundedUser, private_devnet: Devnet
) -> None:
    net = private_devnet  # this test moves the chain clock
    lock_time = net.deployment.lock_time or 3600
    async with (
        start_broker(on=net, deps=engine_deps(refundMarginSeconds=900)) as broker,
        aiohttp.ClientSession() as s,
    ):
        core, provider = broker.core, broker.provider.address
        user = await funded_user(provider, amount=2 * OG, on=net)
        auth = make_token(user.private_key, provider)
        for i in range(5):
            assert (await chat(s, broker.url, auth, stream=i % 2 == 0))[0] == 200
        async with core.db.connect() as conn:
            owed = await repo.unsettled_fee(conn, user.address)
        assert owed > 0

        ledger = net.chain.ledger(net.chain.wallet(user.private_key))
        receipt = await ledger.retrieve_fund([provider])  # everything becomes a pending refund
        requested_at = (await net.chain.w3.eth.get_block(receipt.block_number))["timestamp"]
        await net.increase_time(lock_time - 900 - 300)  # unlock in 20 min: small fees keep waiting
        await asyncio.sleep(1.0)  # several engine rounds
        async with core.db.connect() as conn:
            assert await repo.unsettled_fee(conn, user.address) == owed

        await net.increase_time(400)  # unlock in ~13 min: inside the safety margin

        async def settled() -> bool:
            async with core.db.connect() as conn:
                return await repo.unsettled_fee(conn, user.address) == 0

        await eventually(settled)
        settled_at = await net.timestamp()
        assert settled_at < requested_at + lock_time

        await net.increase_time(900)  # the refund unlocks; the user takes everything left
        await ledger.retrieve_fund([provider])
        [account] = await core.inference.get_batch_accounts_by_users([user.address])
        assert (account.balance, account.pending_refund) == (0, 0)
        ledger_state = await ledger.get_ledger(user.address)
        assert ledger_state.total_balance == 10 * OG - owed  # the provider got every fee
