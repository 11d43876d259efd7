"""The Python user client against the official contracts on a local devnet."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from zgserve.broker.auth import TokenVerifier, check_account
from zgserve.broker.errors import StaleGeneration, TokenRevoked
from zgserve.chain import ChainClient
from zgserve.chain.errors import MinimumDepositRequired
from zgserve.client.network import resolve_network
from zgserve.client.tokens import EPHEMERAL_TOKEN_ID, decode_api_key
from zgserve.client.user import UserClient, openai_for_provider
from zgserve.common.errors import BadRequest
from zgserve.common.money import OG
from zgserve.devnet.deployment import Deployment
from zgserve.devnet.network import Devnet
from zgserve.devnet.testing import NewAccount, RegisterProvider


async def test_ledger_transfer_acknowledge_refund(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = (await register_provider()).address
    user = UserClient(chain, (await new_account()).private_key)
    async with user:
        assert await user.get_ledger() is None
        with pytest.raises(MinimumDepositRequired):
            await user.deposit(2 * OG)
        await user.deposit(10 * OG)  # creates the ledger
        ledger = await user.get_ledger()
        assert ledger is not None
        assert (ledger.available_balance, ledger.total_balance) == (10 * OG, 10 * OG)

        listed = {s.provider for s in await user.list_providers()}
        assert provider in listed

        # No account yet: acknowledging transfers 1 0G, which creates an acknowledged account.
        account = await user.acknowledge(provider)
        assert account.acknowledged
        assert account.balance == OG
        await user.transfer(provider, 2 * OG)
        account = await user.acknowledge(provider)  # already acknowledged: nothing sent
        assert account.balance == 3 * OG
        assert await user.ledger_providers() == [provider]
        assert [a.provider for a in await user.accounts()] == [provider]

        # Refund request: the whole balance becomes a pending refund, locked for lockTime.
        (receipt,) = await user.request_refund()
        assert receipt.status == 1
        account = await user.get_account(provider)
        assert account is not None
        assert (account.balance, account.pending_refund) == (3 * OG, 3 * OG)
        assert [r.amount for r in account.live_refunds] == [3 * OG]
        # A new transfer cancels pending refunds first (nothing leaves the ledger).
        await user.transfer(provider, OG)
        account = await user.get_account(provider)
        assert account is not None
        assert account.pending_refund == 2 * OG
        ledger = await user.get_ledger()
        assert ledger is not None
        assert ledger.available_balance == 7 * OG

        await user.withdraw(2 * OG)
        ledger = await user.get_ledger()
        assert ledger is not None
        assert (ledger.available_balance, ledger.total_balance) == (5 * OG, 8 * OG)


async def test_refund_matures_and_reacknowledge(
    private_devnet: Devnet, register_provider: RegisterProvider
) -> None:
    provider = (await register_provider(on=private_devnet)).address
    chain = private_devnet.chain
    key = (await private_devnet.new_account()).private_key
    async with UserClient(chain, key) as user:
        await user.deposit(5 * OG)
        await user.acknowledge(provider)
        await user.request_refund([provider])
        await private_devnet.increase_time(await user.inference.lock_time() + 1)
        await user.request_refund([provider])  # the matured refund returns to the ledger
        account = await user.get_account(provider)
        assert account is not None
        assert (account.balance, account.pending_refund) == (0, 0)
        ledger = await user.get_ledger()
        assert ledger is not None
        assert ledger.available_balance == 5 * OG

        # With a zero balance the user may withdraw the acknowledgement; acknowledge() restores it.
        await user.inference.acknowledge_tee_signer(provider, False)
        account = await user.get_account(provider)
        assert account is not None
        assert not account.acknowledged
        account = await user.acknowledge(provider)
        assert account.acknowledged
        assert account.balance == 0  # re-acknowledged, not funded


async def test_api_keys_and_revocation(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = (await register_provider()).address
    verifier = TokenVerifier(provider)
    async with UserClient(chain, (await new_account()).private_key) as user:
        await user.deposit(5 * OG)
        await user.acknowledge(provider)

        session = await user.session_token(provider)
        assert session.token.token_id == EPHEMERAL_TOKEN_ID
        assert await user.session_token(provider) is session  # cached, as the SDK does
        headers = await user.session_headers(provider)
        assert headers == {"Authorization": session.authorization()}

        first = await user.create_api_key(provider)
        assert first.token.token_id == 0
        assert first.token.expires_at == 0
        assert first.api_key().startswith("app-sk-")
        timed = await user.create_api_key(provider, token_id=7, expires_in_ms=60_000)
        assert timed.token.expires_at == timed.token.timestamp + 60_000

        account = await user.get_account(provider)
        token = verifier.bearer(first.authorization())
        check_account(token, account)  # accepted

        await user.revoke_api_key(provider, 0)
        account = await user.get_account(provider)
        assert account is not None
        assert account.revoked_bitmap == 1
        with pytest.raises(TokenRevoked):
            check_account(token, account)
        second = await user.create_api_key(provider)
        assert second.token.token_id == 1  # lowest id not revoked
        check_account(verifier.bearer(second.authorization()), account)
        check_account(verifier.bearer(session.authorization()), account)  # ephemeral unaffected
        with pytest.raises(BadRequest):
            await user.revoke_api_key(provider, EPHEMERAL_TOKEN_ID)

        await user.revoke_all_tokens(provider)
        account = await user.get_account(provider)
        assert account is not None
        assert (account.generation, account.revoked_bitmap) == (1, 0)
        for old in (session, second):
            with pytest.raises(StaleGeneration):
                check_account(verifier.bearer(old.authorization()), account)
        renewed = await user.session_token(provider)
        assert renewed is not session
        assert renewed.token.generation == 1
        check_account(verifier.bearer(renewed.authorization()), account)


async def test_unacknowledged_services_are_hidden(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    hidden = (await register_provider(acknowledge=False)).address
    async with UserClient(chain, (await new_account()).private_key) as user:
        assert hidden not in {s.provider for s in await user.list_providers()}
        everything = await user.list_providers(include_unacknowledged=True)
        assert hidden in {s.provider for s in everything}
        service = await user.get_service(hidden)
        assert not service.tee_signer_acknowledged


async def test_connect_from_deployment_file(
    deployment: Deployment, deployment_file: Path, new_account: NewAccount
) -> None:
    network = await resolve_network(deployment=deployment_file)
    assert network.chain_id == deployment.chain_id
    assert network.inference == deployment.contracts.inference
    explicit = await resolve_network(
        rpc_url=deployment.rpc_url,
        ledger=deployment.contracts.ledger,
        inference=deployment.contracts.inference,
    )
    assert explicit.chain_id == deployment.chain_id  # read from the RPC
    user = await UserClient.connect(network, (await new_account()).private_key)
    async with user:
        assert await user.wallet_balance() > 0
        assert await user.get_ledger() is None


async def test_openai_for_provider_without_an_event_loop(
    deployment_file: Path, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    registered = await register_provider(url="http://127.0.0.1:9/")
    network = await resolve_network(deployment=deployment_file)
    account = await new_account()
    # Synchronous callers have no event loop: run it in a worker thread here.
    client = await asyncio.to_thread(openai_for_provider, network, account.private_key, registered.address)
    assert str(client.base_url).rstrip("/") == "http://127.0.0.1:9/v1/proxy"
    token = decode_api_key(client.api_key)
    assert token.recover_signer() == account.address
    assert (token.token.provider, token.token.token_id) == (registered.address, EPHEMERAL_TOKEN_ID)
    client.close()
