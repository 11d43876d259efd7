"""Exact admission across replicas: what a user's account covers is never exceeded, however many
brokers serve them, across a settlement by either replica, and a dead replica's holds lapse."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from tests.integration.broker.test_broker_replicas import two_replicas
from zgserve.broker import shared_admission
from zgserve.broker.db import repo
from zgserve.broker.errors import InsufficientBalance
from zgserve.broker.shared_admission import SharedBalanceGuard
from zgserve.common.money import OG

pytestmark = pytest.mark.postgres

# One request reserves and costs just under 0.1 0G at these prices: 1 0G covers about 10.
PRICES = {"inputPrice": 1, "outputPrice": 12 * 10**15}
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


async def ask(s: aiohttp.ClientSession, url: str, auth: str, stream: bool) -> int:
    async with s.post(
        url + "/v1/proxy/chat/completions", json=BODY | {"stream": stream}, headers={"Authorization": auth}
    ) as r:
        await r.read()
        return r.status


async def recorded(broker: Any, user: str) -> tuple[int, int]:
    async with broker.core.db.connect() as conn:
        page = await repo.list_requests(conn, user=user, limit=1000)
        # The per-user unsettled total that admission reads (kept by triggers) matches the records.
        kept = (await conn.execute(_KEPT, {"u": user.lower()})).scalar_one()
        summed = (await conn.execute(_SUMMED, {"u": user.lower()})).scalar_one()
    assert kept == summed
    return page.total, page.fee


_KEPT = text('SELECT coalesce(sum(fee), 0) FROM broker_unsettled WHERE "user" = :u')
_SUMMED = text('SELECT coalesce(sum(fee), 0) FROM broker_requests WHERE "user" = :u AND NOT settled')


@pytest.mark.parametrize("trial", range(3))
async def test_a_burst_over_two_replicas_never_overdraws(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path, trial: int
) -> None:
    async with two_replicas(start_broker, tmp_path, **PRICES) as (a, b):
        assert isinstance(a.core.guard, SharedBalanceGuard)
        assert isinstance(b.core.guard, SharedBalanceGuard)
        user = await funded_user(a.provider.address, amount=OG)
        auth = make_token(user.private_key, a.provider.address)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as s:
            first = [ask(s, (a.url, b.url)[i % 2], auth, i % 3 == 0) for i in range(40)]
            # A settlement by A lands in the middle of the burst.
            settle = s.post(a.url + "/v1/settle", json={})
            results = await asyncio.gather(*first[:20], _settle(settle), *first[20:])
            again = await asyncio.gather(*(ask(s, (a.url, b.url)[i % 2], auth, False) for i in range(40)))
        statuses = [r for r in [*results, *again] if r != "settled"]
        assert set(statuses) <= {200, 402}, statuses
        total, fees = await recorded(a, user.address)
        assert total == statuses.count(200)
        assert fees <= OG  # never more served than the account covers, settled or not
        assert statuses.count(200) >= 9  # and the account is used, not refused wholesale


async def _settle(request: Any) -> str:
    async with request as r:
        assert r.status == 200, await r.text()
    return "settled"


async def test_a_dead_replicas_holds_lapse(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path
) -> None:
    async with two_replicas(start_broker, tmp_path, **PRICES, billing={"reservationTtlSeconds": 2}) as (a, b):
        user = await funded_user(a.provider.address, amount=OG)
        guard = b.core.guard
        assert isinstance(guard, SharedBalanceGuard)
        account = (await b.core.accounts.get(user.address.lower())).account
        assert account is not None
        # B takes holds and "dies" (its renewal stops without releasing them).
        holds = [await guard.reserve(user.address, account, OG // 4) for _ in range(3)]
        assert len(holds) == 3
        assert guard._task is not None
        guard._task.cancel()
        with pytest.raises(Exception, match="only"):
            await a.core.guard.reserve(user.address, account, OG // 2)
        await asyncio.sleep(2.5)  # past the reservation TTL
        assert await a.core.guard.reserve(user.address, account, OG // 2)


async def _all_given_back(broker: Any, user: str) -> None:
    """Wait (a loaded machine may be slow) until no hold of ``user`` is left in the database."""
    deadline = asyncio.get_running_loop().time() + 10
    while rows := await _rows(broker, user):
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.05)


async def _rows(broker: Any, user: str) -> list[tuple[str, int]]:
    async with broker.core.db.connect() as conn:
        q = text('SELECT holder, amount FROM broker_reservations WHERE "user" = :u')
        return [(str(h), int(a)) for h, a in await conn.execute(q, {"u": user.lower()})]


async def test_a_burst_of_one_user_shares_one_budget_and_gives_it_back(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path
) -> None:
    async with two_replicas(start_broker, tmp_path, **PRICES) as (a, _b):
        guard = a.core.guard
        assert isinstance(guard, SharedBalanceGuard)
        user = await funded_user(a.provider.address, amount=10 * OG)
        account = (await a.core.accounts.get(user.address.lower())).account
        assert account is not None
        amount = OG // 1000
        first = await guard.reserve(user.address, account, amount)  # exact: learns the headroom
        burst = await asyncio.gather(*(guard.reserve(user.address, account, amount) for _ in range(30)))
        rows = await _rows(a, user.address)
        # The first hold, and budgets of 16 requests each instead of 30 rows.
        assert len(rows) <= 4, rows
        assert sum(amount for _, amount in rows) >= 31 * amount
        first.release()
        for hold in burst:
            hold.charge(amount)
        await asyncio.sleep(shared_admission.BUDGET_IDLE)
        await _all_given_back(a, user.address)  # every budget given back once idle


async def test_budgets_never_let_two_replicas_hold_more_than_the_balance(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path
) -> None:
    async with two_replicas(start_broker, tmp_path, **PRICES) as (a, b):
        user = await funded_user(a.provider.address, amount=OG)
        amount = OG // 200  # 200 requests' worth: budgets while there is room, single holds after
        held: list[Any] = []

        async def take(broker: Any) -> None:
            guard = broker.core.guard
            account = (await broker.core.accounts.get(user.address.lower())).account
            refused = 0
            while refused < 3:
                try:
                    held.append(await guard.reserve(user.address, account, amount))
                except InsufficientBalance:
                    refused += 1
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(take(r) for r in (a, b, a, b)))
        assert len(held) * amount <= OG  # never more in flight than the account holds
        assert len(held) >= 150  # and most of it usable, budgets or not
        rows = await _rows(a, user.address)
        assert sum(x for _, x in rows) <= OG
        for hold in held:
            hold.release()
        await _all_given_back(a, user.address)
