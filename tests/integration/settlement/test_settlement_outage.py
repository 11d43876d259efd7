"""An RPC outage mid-settlement: the proxy keeps serving within the guard, the engine backs off,
then completes once the chain is back (same port, same state)."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from tests.integration.settlement.conftest import engine_deps
from tests.integration.settlement.test_settlement_broker import chat
from tests.integration.settlement.test_settlement_deadlines import eventually
from zgserve.broker.db import repo
from zgserve.common.money import OG
from zgserve.devnet.anvil import Anvil
from zgserve.devnet.network import Devnet


async def test_rpc_outage_backs_off_and_completes(
    start_broker: StartBroker, funded_user: FundedUser, private_devnet: Devnet
) -> None:
    net = private_devnet  # this test stops the chain
    async with (
        # maxAge 1 s: every fee is due a second after it is recorded.
        start_broker(on=net, deps=engine_deps(maxAgeSeconds=1), auth={"maxStaleSeconds": 60}) as broker,
        aiohttp.ClientSession() as s,
        contextlib.AsyncExitStack() as stack,
    ):
        core, provider = broker.core, broker.provider.address
        users = [await funded_user(provider, amount=OG, on=net) for _ in range(2)]
        auths = [make_token(u.private_key, provider) for u in users]
        for auth in auths:
            assert (await chat(s, broker.url, auth, stream=False))[0] == 200

        async def all_settled() -> bool:
            async with core.db.connect() as conn:
                return await repo.total_unsettled(conn) == 0

        await eventually(all_settled)
        # Settling invalidated the broker's cached accounts: one more request each re-reads them
        # (and records fees the engine will owe once the chain is back).
        for auth in auths:
            assert (await chat(s, broker.url, auth, stream=False))[0] == 200

        # The chain goes away (before those fees are a second old), keeping its state for the restart.
        state = await net.chain.request("anvil_dumpState")
        port = net.anvil.port
        await net.anvil.stop()
        errors_before = core.settlement.metrics.rounds.labels("error")._value.get()  # type: ignore[union-attr]
        for i, auth in enumerate(auths * 2):  # the proxy keeps serving from cached accounts
            status, body = await chat(s, broker.url, auth, stream=i % 2 == 0)
            assert status == 200, body
        await asyncio.sleep(4.0)
        errors = core.settlement.metrics.rounds.labels("error")._value.get() - errors_before  # type: ignore[union-attr]
        assert 1 <= errors <= 6  # rounds fail and back off; the loop does not spin
        async with core.db.connect() as conn:
            assert await repo.total_unsettled(conn) > 0

        anvil = Anvil(port=port, accounts=net.anvil.n_accounts)
        await anvil.start()
        stack.push_async_callback(anvil.stop)
        await net.chain.request("anvil_loadState", [state])

        await eventually(all_settled, within=30)
        async with core.db.connect() as conn:
            owed = await repo.unsettled_by_user(conn)
            recorded = {u.address: (await repo.list_requests(conn, user=u.address)).fee for u in users}
        assert owed == {}
        accounts = await core.inference.get_batch_accounts_by_users([u.address for u in users])
        for user, account in zip(users, accounts, strict=True):
            assert OG - account.balance == recorded[user.address]
