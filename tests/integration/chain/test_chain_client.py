"""The client's sending machinery against anvil: nonces, receipts, failures, transport errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from zgserve.chain import ChainClient, ContractCall, NetworkConfig, TxPolicy
from zgserve.chain.errors import (
    AlreadyInitialized,
    CallerNotLedger,
    DirectDepositsDisabled,
    LockTimeOutOfRange,
    MinimumDepositRequired,
    ReceiptTimeout,
    RpcUnavailable,
    TransactionFailed,
)
from zgserve.common.errors import ConfigError
from zgserve.common.money import OG
from zgserve.common.net import free_port
from zgserve.devnet.artifacts import sdk_cache_dir
from zgserve.devnet.deployment import Deployment
from zgserve.devnet.network import Devnet
from zgserve.devnet.testing import NewAccount, RegisterProvider


async def test_concurrent_sends_from_one_sender(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    user = chain.wallet((await new_account()).private_key)
    await chain.ledger(user).add_ledger(3 * OG)
    await chain.ledger(user).transfer_fund(provider.address, OG)
    start = await chain.pending_nonce(user.address)

    inference = chain.inference(user)
    receipts = await asyncio.gather(*(inference.revoke_token(provider.address, i) for i in range(20)))

    assert all(r.status == 1 for r in receipts)
    assert await chain.pending_nonce(user.address) == start + 20
    nonces = [int((await chain.get_transaction(r.tx_hash) or {})["nonce"]) for r in receipts]
    assert sorted(nonces) == list(range(start, start + 20))
    account = await inference.get_account(user.address, provider.address)
    assert account.revoked_bitmap == (1 << 20) - 1


async def test_nonce_resyncs_after_another_client_used_the_key(
    devnet: Devnet, chain: ChainClient, new_account: NewAccount
) -> None:
    key = (await new_account()).private_key
    ours = chain.wallet(key)
    await ours.transact(ContractCall(to=ours.address, data=b""))  # caches the next nonce
    async with ChainClient(devnet.network_config()) as other:
        theirs = other.wallet(key)
        await theirs.transact(ContractCall(to=theirs.address, data=b""))
    # Our cached nonce is now stale; the node refuses it and the wallet resyncs by itself.
    receipt = await chain.ledger(ours).add_ledger(3 * OG)
    assert receipt.status == 1


async def test_sign_then_send_raw_and_receipt_timeout(chain: ChainClient, new_account: NewAccount) -> None:
    wallet = chain.wallet((await new_account()).private_key)
    first = await wallet.sign_transaction(ContractCall(to=wallet.address, data=b"", label="first"))
    second = await wallet.sign_transaction(ContractCall(to=wallet.address, data=b"", label="second"))
    assert second.nonce == first.nonce + 1
    assert await chain.get_transaction(first.tx_hash) is None
    assert await chain.get_receipt(first.tx_hash) is None

    # The second waits behind the nonce gap until the first is broadcast.
    assert await chain.send_raw(second.raw) == second.tx_hash
    with pytest.raises(ReceiptTimeout) as timed_out:
        await chain.wait_receipt(second.tx_hash, timeout=0.3)
    assert timed_out.value.tx_hash == second.tx_hash
    assert await chain.send_raw(first.raw) == first.tx_hash
    assert await chain.send_raw(first.raw) == first.tx_hash  # re-sending is harmless
    assert (await chain.wait_receipt(first.tx_hash)).status == 1
    receipt = await chain.wait_receipt(second.tx_hash)
    assert (receipt.status, receipt.sender) == (1, wallet.address)
    assert await chain.get_receipt(second.tx_hash) == receipt


async def test_a_released_nonce_leaves_no_gap(chain: ChainClient, new_account: NewAccount) -> None:
    """Two settlers on one key: one gives up its signed batch after the other signed the next one."""
    wallet = chain.wallet((await new_account()).private_key)
    call = ContractCall(to=wallet.address, data=b"")
    given_up = await wallet.sign_transaction(call)
    later = await wallet.sign_transaction(call)
    await chain.send_raw(later.raw)
    await wallet.release_nonce(given_up)  # not the last one handed out: the gap is filled
    assert (await chain.wait_receipt(later.tx_hash, timeout=5)).status == 1
    # The last one handed out is simply taken again by the next transaction.
    last = await wallet.sign_transaction(call)
    await wallet.release_nonce(last)
    again = await wallet.sign_transaction(call)
    assert again.nonce == last.nonce == later.nonce + 1
    await chain.send_raw(again.raw)
    assert (await chain.wait_receipt(again.tx_hash, timeout=5)).status == 1


async def test_failed_receipt_is_replayed_for_its_reason(chain: ChainClient, new_account: NewAccount) -> None:
    wallet = chain.wallet((await new_account()).private_key)
    ledger = chain.ledger(wallet)
    # An explicit gas limit skips estimation, so the revert happens on chain.
    call = ledger.call_data("addLedger", "", value=OG)
    with pytest.raises(MinimumDepositRequired) as reverted:
        await wallet.transact(call, gas=300_000)
    assert reverted.value.tx_hash is not None
    receipt = await chain.get_receipt(reverted.value.tx_hash)
    assert receipt is not None
    assert receipt.status == 0

    with pytest.raises(TransactionFailed, match="gas used"):
        await wallet.transact(ledger.call_data("addLedger", "", value=3 * OG), gas=30_000)
    # The wallet goes on with the next nonce after failures.
    assert (await ledger.add_ledger(3 * OG)).status == 1


async def test_contract_guards_are_typed(devnet: Devnet, chain: ChainClient, new_account: NewAccount) -> None:
    owner = chain.inference(devnet.owner_wallet())
    assert devnet.deployment.owner is not None
    with pytest.raises(AlreadyInitialized):
        await owner.send(
            "initialize", 3600, devnet.deployment.contracts.ledger, devnet.deployment.owner.address
        )
    with pytest.raises(LockTimeOutOfRange) as out_of_range:
        await owner.update_lock_time(60)
    assert (out_of_range.value.lockTime, out_of_range.value.min, out_of_range.value.max) == (
        60,
        3600,
        604_800,
    )
    user = chain.wallet((await new_account()).private_key)
    with pytest.raises(CallerNotLedger) as not_ledger:
        await chain.inference(user).send("depositFund", user.address, user.address, 0)
    assert not_ledger.value.caller == user.address
    with pytest.raises(DirectDepositsDisabled):
        await user.transact(ContractCall(to=chain.config.inference, data=b"", value=OG))


async def test_unreachable_rpc_and_wrong_chain(devnet: Devnet) -> None:
    fast = TxPolicy(max_retries=2, backoff_initial_s=0.01)
    dead = NetworkConfig(rpc_url=f"http://127.0.0.1:{free_port()}", chain_id=31337, tx_policy=fast)
    with pytest.raises(RpcUnavailable, match="after 3 tries"):
        async with ChainClient(dead, abis=devnet.chain.abis):
            pass
    wrong = devnet.network_config().model_copy(update={"chain_id": 16602})
    with pytest.raises(ConfigError, match="serves chain id 31337"):
        async with ChainClient(wrong, abis=devnet.chain.abis):
            pass


async def test_abis_from_an_explicit_directory(devnet: Devnet) -> None:
    # What a machine without Node uses: the cached SDK ABI files, copied anywhere.
    config = devnet.network_config().model_copy(update={"abi_dir": sdk_cache_dir()})
    async with ChainClient(config) as client:
        assert await client.inference().lock_time() == 3600
        assert await client.ledger().owner() == devnet.owner_wallet().address


def test_deployment_file_round_trip(deployment: Deployment, deployment_file: Path) -> None:
    loaded = Deployment.load(deployment_file)
    assert loaded == deployment
    assert '"rpcUrl"' in deployment_file.read_text()
    assert (
        loaded.contracts.inference == "0x0165878A594ca255338adfa4d48449f69242Eb8F"
    )  # the SDK's 31337 default
    assert NetworkConfig.from_deployment(loaded).service_name == "inference-v1.0"
    with pytest.raises(ConfigError, match="cannot read deployment file"):
        Deployment.load(deployment_file.with_name("missing.json"))
