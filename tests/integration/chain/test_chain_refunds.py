"""Refunds (retrieveFund) and their lock time, and token revocation."""

from __future__ import annotations

import pytest

from zgserve.chain import ChainClient
from zgserve.chain.errors import AccountNotExists, CannotRevokeWithNonZeroBalance, TooManyRefunds
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet
from zgserve.devnet.testing import NewAccount, RegisterProvider


async def test_refund_locked_until_lock_time_then_paid(
    private_devnet: Devnet, register_provider: RegisterProvider
) -> None:
    # Moves the chain clock, so it runs on a devnet of its own.
    net = private_devnet
    chain = net.chain
    provider = await register_provider(on=net)
    user = chain.wallet((await net.new_account()).private_key)
    ledger, inference = chain.ledger(user), chain.inference()
    lock_time = await inference.lock_time()
    assert lock_time == 3600

    await ledger.add_ledger(10 * OG)
    await ledger.transfer_fund(provider.address, 4 * OG)
    receipt = await ledger.retrieve_fund([provider.address])
    requested_at = await chain.block_timestamp(receipt.block_number)
    account = await inference.get_account(user.address, provider.address)
    assert (account.balance, account.pending_refund) == (4 * OG, 4 * OG)
    assert [(r.amount, r.created_at) for r in account.live_refunds] == [(4 * OG, requested_at)]
    assert await inference.get_pending_refund(user.address, provider.address) == 4 * OG
    [event] = await inference.get_events(
        "RefundRequested", receipt.block_number, receipt.block_number, user=user.address
    )
    assert (event.args["provider"], event.args["index"], event.tx_hash) == (
        provider.address,
        0,
        receipt.tx_hash,
    )

    await net.increase_time(lock_time - 5)
    await ledger.retrieve_fund([provider.address])  # still locked: nothing comes back
    assert (await ledger.get_ledger(user.address)).available_balance == 6 * OG
    assert (await inference.get_account(user.address, provider.address)).pending_refund == 4 * OG

    await net.increase_time(10)
    await ledger.retrieve_fund([provider.address])
    led = await ledger.get_ledger(user.address)
    assert (led.available_balance, led.total_balance) == (10 * OG, 10 * OG)
    account = await inference.get_account(user.address, provider.address)
    assert (account.balance, account.pending_refund, account.live_refunds) == (0, 0, ())


async def test_transfer_cancels_pending_refund(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    user = chain.wallet((await new_account()).private_key)
    ledger, inference = chain.ledger(user), chain.inference()
    await ledger.add_ledger(10 * OG)
    await ledger.transfer_fund(provider.address, 2 * OG)
    await ledger.retrieve_fund([provider.address])

    await ledger.transfer_fund(provider.address, OG)  # cancels 1 of the 2 pending, moves nothing
    account = await inference.get_account(user.address, provider.address)
    assert (account.balance, account.pending_refund) == (2 * OG, OG)
    assert (await ledger.get_ledger(user.address)).available_balance == 8 * OG

    await ledger.transfer_fund(provider.address, 3 * OG)  # cancels the last 1, moves 2
    account = await inference.get_account(user.address, provider.address)
    assert (account.balance, account.pending_refund, account.live_refunds) == (4 * OG, 0, ())
    assert (await ledger.get_ledger(user.address)).available_balance == 6 * OG


async def test_sixth_refund_is_too_many(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    user = chain.wallet((await new_account()).private_key)
    ledger = chain.ledger(user)
    await ledger.add_ledger(20 * OG)
    await ledger.transfer_fund(provider.address, 10 * OG)
    await ledger.retrieve_fund([provider.address])
    # Each smaller transfer cancels part of the newest refund and frees exactly its amount,
    # which the next retrieveFund requests as a new refund.
    for k in range(1, 5):
        await ledger.transfer_fund(provider.address, OG // 10**k)
        await ledger.retrieve_fund([provider.address])
    account = await chain.inference().get_account(user.address, provider.address)
    assert account.valid_refunds_length == 5
    await ledger.transfer_fund(provider.address, OG // 10**5)
    with pytest.raises(TooManyRefunds) as too_many:
        await ledger.retrieve_fund([provider.address])
    assert (too_many.value.user, too_many.value.provider) == (user.address, provider.address)


async def test_token_revocation_and_generation(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    user = chain.wallet((await new_account()).private_key)
    inference = chain.inference(user)
    with pytest.raises(AccountNotExists):
        await inference.revoke_token(provider.address, 1)

    await chain.ledger(user).add_ledger(3 * OG)
    await chain.ledger(user).transfer_fund(provider.address, OG)
    await inference.revoke_token(provider.address, 5)
    await inference.revoke_tokens(provider.address, [0, 254])
    account = await inference.get_account(user.address, provider.address)
    assert account.revoked_bitmap == (1 << 5) | 1 | (1 << 254)
    assert account.is_token_revoked(5)
    assert not account.is_token_revoked(6)
    assert await inference.is_token_revoked(user.address, provider.address, 254)
    assert not await inference.is_token_revoked(user.address, provider.address, 3)

    receipt = await inference.revoke_all_tokens(provider.address)
    account = await inference.get_account(user.address, provider.address)
    assert (account.generation, account.revoked_bitmap) == (1, 0)
    [event] = inference.events_in(receipt, "AllTokensRevoked")
    assert event.args == {"user": user.address, "provider": provider.address, "newGeneration": 1}

    # Withdrawing acknowledgement needs an empty sub-account.
    with pytest.raises(CannotRevokeWithNonZeroBalance) as nonzero:
        await inference.acknowledge_tee_signer(provider.address, False)
    assert nonzero.value.balance == OG
