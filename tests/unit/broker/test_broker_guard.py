"""Balance guard: the check and the hold are one step, so concurrency cannot overdraw."""

from __future__ import annotations

import asyncio

import pytest

from zgserve.broker.billing import BalanceGuard, Prices, input_estimate
from zgserve.broker.errors import InsufficientBalance, OutstandingDebt
from zgserve.chain.types import Account


def account(balance: int, pending: int = 0) -> Account:
    return Account("0x" + "01" * 20, "0x" + "02" * 20, 0, balance, pending, (), "", True, 0, 0, 0)


async def test_concurrent_reservations_never_exceed_headroom() -> None:
    async def load(user: str) -> tuple[int, int]:
        await asyncio.sleep(0.001)  # a real database read yields to other requests
        return 0, 0

    guard = BalanceGuard(load, refresh=60)
    acct = account(balance=1000, pending=100)  # 900 available

    async def one() -> bool:
        try:
            await guard.reserve("u", acct, 100)
            return True
        except InsufficientBalance:
            return False

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert sum(results) == 9


async def test_charge_replaces_the_hold_and_release_frees_it() -> None:
    async def load(user: str) -> tuple[int, int]:
        return 50, 0

    guard = BalanceGuard(load, refresh=60)
    acct = account(balance=300)
    first = await guard.reserve("u", acct, 200)  # 250 headroom
    with pytest.raises(InsufficientBalance):
        await guard.reserve("u", acct, 100)
    first.charge(30)
    first.charge(999)  # a second settle of one reservation is ignored
    assert await guard.unsettled("u") == 80
    second = await guard.reserve("u", acct, 220)
    second.release()
    await guard.reserve("u", acct, 220)


async def test_debt_refuses_until_paid() -> None:
    debt = {"value": 5}

    async def load(user: str) -> tuple[int, int]:
        return 0, debt["value"]

    guard = BalanceGuard(load, refresh=60)
    with pytest.raises(OutstandingDebt) as info:
        await guard.reserve("u", account(10**18), 1)
    assert info.value.status == 402
    debt["value"] = 0
    guard.invalidate("u")
    await guard.reserve("u", account(10**18), 1)


def test_estimates() -> None:
    assert Prices(2, 3).fee(10, 5) == 35
    assert input_estimate(b"x" * 10, 3) == 4
