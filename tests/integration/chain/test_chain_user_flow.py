"""The user side on the official contracts: ledger, deposits, transfers to a provider."""

from __future__ import annotations

import pytest

from zgserve.chain import ChainClient
from zgserve.chain.errors import (
    AccountNotExists,
    InsufficientAvailableBalance,
    InsufficientBalance,
    LedgerExists,
    LedgerNotExists,
    MinimumDepositRequired,
    ServiceNotFound,
    TooManyProviders,
    ZeroAmountNotAllowed,
)
from zgserve.common.money import OG
from zgserve.devnet.testing import NewAccount, RegisterProvider


async def test_add_ledger_deposit_transfer_and_account(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    user = chain.wallet((await new_account()).private_key)
    ledger = chain.ledger(user)
    inference = chain.inference()

    with pytest.raises(MinimumDepositRequired) as below_min:
        await ledger.add_ledger(3 * OG - 10**15)
    assert (below_min.value.provided, below_min.value.required) == (3 * OG - 10**15, 3 * OG)
    assert below_min.value.tx_hash is None  # refused at estimation, nothing was sent

    before = await user.balance()
    receipt = await ledger.add_ledger(3 * OG, "hello")
    assert await user.balance() == before - 3 * OG - receipt.fee
    await ledger.deposit_fund(2 * OG)
    led = await ledger.get_ledger(user.address)
    assert (led.user, led.available_balance, led.total_balance, led.additional_info) == (
        user.address,
        5 * OG,
        5 * OG,
        "hello",
    )
    with pytest.raises(LedgerExists):
        await ledger.add_ledger(3 * OG)

    assert not await inference.account_exists(user.address, provider.address)
    await ledger.transfer_fund(provider.address, 2 * OG)
    account = await inference.get_account(user.address, provider.address)
    assert account.user == user.address
    assert account.provider == provider.address
    assert (account.balance, account.pending_refund, account.nonce, account.generation) == (2 * OG, 0, 0, 0)
    assert account.acknowledged  # the ledger's addAccount acknowledges automatically
    assert account.additional_info == "hello"  # copied from the ledger
    assert account.refunds == ()
    led = await ledger.get_ledger(user.address)
    assert (led.available_balance, led.total_balance) == (3 * OG, 5 * OG)
    assert await ledger.get_ledger_providers(user.address) == [provider.address]
    users_of_provider = await inference.get_accounts_by_provider(provider.address)
    assert [a.user for a in users_of_provider] == [user.address]

    batch = await chain.inference(provider.wallet).get_batch_accounts_by_users(
        [user.address, provider.tee_address]
    )
    assert batch[0].exists
    assert batch[0].balance == 2 * OG
    assert not batch[1].exists  # a missing account comes back zeroed


async def test_ledger_errors_are_typed(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    user = chain.wallet((await new_account()).private_key)
    ledger = chain.ledger(user)

    with pytest.raises(LedgerNotExists) as missing:
        await ledger.get_ledger(user.address)
    assert missing.value.user == user.address
    with pytest.raises(AccountNotExists) as no_account:
        await chain.inference().get_account(user.address, provider.address)
    assert (no_account.value.user, no_account.value.provider) == (user.address, provider.address)
    with pytest.raises(ZeroAmountNotAllowed):
        await ledger.deposit_fund(0)

    await ledger.deposit_fund(4 * OG)  # creates the ledger
    with pytest.raises(MinimumDepositRequired) as first_transfer:
        await ledger.transfer_fund(provider.address, OG // 2)
    assert first_transfer.value.required == OG
    with pytest.raises(ServiceNotFound):
        await ledger.transfer_fund(provider.address, OG, service_name="inference")
    with pytest.raises(InsufficientAvailableBalance) as overspend:
        await ledger.transfer_fund(provider.address, 5 * OG)
    assert (overspend.value.available, overspend.value.required) == (4 * OG, 5 * OG)
    with pytest.raises(InsufficientBalance):
        await ledger.refund(5 * OG)
    with pytest.raises(MinimumDepositRequired):
        await ledger.refund(2 * OG)  # would leave 2 0G: neither 0 nor the 3 0G minimum
    with pytest.raises(TooManyProviders) as too_many:
        await ledger.retrieve_fund([provider.address] * 21)
    assert (too_many.value.requested, too_many.value.maximum) == (21, 20)

    await ledger.refund(4 * OG)  # down to 0: the ledger is deleted
    with pytest.raises(LedgerNotExists):
        await ledger.get_ledger(user.address)
