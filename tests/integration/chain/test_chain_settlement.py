"""TEE settlement on the official InferenceServing: EIP-712 signatures and every outcome."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_utils.crypto import keccak

from zgserve.chain import (
    ChainClient,
    SettlementResult,
    SettlementStatus,
    TEESettlementData,
    sign_settlement,
)
from zgserve.chain.errors import NoSettlementsProvided, TooManySettlements
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet
from zgserve.devnet.testing import (
    PROVIDER_STAKE,
    NewAccount,
    RegisteredProvider,
    RegisterProvider,
    service_params,
)

# The worked example of the protocol spec (§3).
SPEC_TEE_KEY = "0x" + "11" * 32
SPEC_TEE_ADDRESS = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
SPEC_CONTRACT = "0x00000000000000000000000000000000000A0002"
SPEC_NONCE = 17_000_000_000_000_000
SPEC_FEE = 123_456_789_000
SPEC_SIGNATURE = bytes.fromhex(
    "5e028421e875956b59bb6f713e086e5f47f7caeb434e7c935611e1519b5ec01a"
    "5e7173150a56d310d06caf74d9cdde2a00facdffeb5b9ca2dc41076f5afe2ed41c"
)


async def test_spec_worked_example_is_accepted(private_devnet: Devnet) -> None:
    """The spec's exact signature, on an InferenceServing at the spec's address, settles."""
    net, chain = private_devnet, private_devnet.chain
    dep = net.deployment
    assert dep.provider is not None
    assert dep.contracts.inference_implementation is not None
    owner = net.owner_wallet()
    # As in the spec: the implementation's runtime code at a fresh address, then initialize.
    code = await chain.request("eth_getCode", [dep.contracts.inference_implementation, "latest"])
    await chain.request("anvil_setCode", [SPEC_CONTRACT, code])
    await chain.inference(owner, address=SPEC_CONTRACT).send(
        "initialize", 3600, dep.contracts.ledger, owner.address
    )
    await chain.ledger(owner).register_service("inference", "example", SPEC_CONTRACT, "spec example")

    provider = chain.wallet(dep.provider.private_key)
    user = chain.wallet(dep.users[0].private_key)
    assert (provider.address, user.address) == (
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    )
    inference = chain.inference(provider, address=SPEC_CONTRACT)
    await inference.add_or_update_service(service_params(SPEC_TEE_ADDRESS), stake=PROVIDER_STAKE)
    await chain.inference(owner, address=SPEC_CONTRACT).acknowledge_tee_signer_by_owner(provider.address)
    ledger = chain.ledger(user)
    await ledger.add_ledger(10 * OG)
    await ledger.transfer_fund(provider.address, 2 * OG, service_name="inference-example")

    data = sign_settlement(
        SPEC_TEE_KEY,
        chain_id=31337,
        contract=SPEC_CONTRACT,
        provider=provider.address,
        user=user.address,
        total_fee=SPEC_FEE,
        requests_hash=keccak(text="example requests hash"),
        nonce=SPEC_NONCE,
    )
    assert data.signature == SPEC_SIGNATURE
    assert (await inference.preview_settlement_results([data])).all_succeed
    assert await inference.simulate_settlement([data]) == [SettlementStatus.SUCCESS]

    provider_before = await provider.balance()
    led_before = await ledger.get_ledger(user.address)
    receipt, results = await inference.settle_fees_with_tee([data])
    assert results == [SettlementResult(user.address, SettlementStatus.SUCCESS, 0)]
    assert await provider.balance() == provider_before + SPEC_FEE - receipt.fee

    account = await inference.get_account(user.address, provider.address)
    assert (account.balance, account.nonce) == (2 * OG - SPEC_FEE, SPEC_NONCE)
    led = await ledger.get_ledger(user.address)
    assert led.total_balance == led_before.total_balance - SPEC_FEE
    assert led.available_balance == led_before.available_balance
    [spent] = ledger.events_in(receipt, "FundSpent")
    assert spent.args == {"user": user.address, "service": SPEC_CONTRACT, "amount": SPEC_FEE}
    assert [e.name for e in inference.events_in(receipt)] == ["BalanceUpdated", "TEESettlementResult"]


async def _funded_user(
    chain: ChainClient, new_account: NewAccount, provider: RegisteredProvider, amount: int
) -> str:
    user = chain.wallet((await new_account()).private_key)
    await chain.ledger(user).add_ledger(max(3 * OG, amount))
    await chain.ledger(user).transfer_fund(provider.address, amount)
    return user.address


def _sign(
    chain: ChainClient, provider: RegisteredProvider, user: str, fee: int, nonce: int, key: str = ""
) -> TEESettlementData:
    assert chain.config.inference is not None
    return sign_settlement(
        key or provider.tee_key,
        chain_id=chain.config.chain_id,
        contract=chain.config.inference,
        provider=provider.address,
        user=user,
        total_fee=fee,
        requests_hash=keccak(text=f"{user}:{nonce}"),
        nonce=nonce,
    )


async def test_settlement_outcomes(
    chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    other_key = (await new_account()).private_key
    inference = chain.inference(provider.wallet)
    ok_user = await _funded_user(chain, new_account, provider, 2 * OG)
    partial_user = await _funded_user(chain, new_account, provider, OG)
    bad_sig_user = await _funded_user(chain, new_account, provider, OG)
    tampered_user = await _funded_user(chain, new_account, provider, OG)
    stranger = (await new_account()).address  # no sub-account

    batch = [
        _sign(chain, provider, ok_user, 10**15, 1),
        _sign(chain, provider, partial_user, 3 * OG, 1),
        _sign(chain, provider, bad_sig_user, 10**15, 1, key=other_key),
        replace(_sign(chain, provider, tampered_user, 10**15, 1), total_fee=2 * 10**15),
        _sign(chain, provider, stranger, 10**15, 1),
        replace(_sign(chain, provider, ok_user, 10**15, 2), provider=stranger),
    ]
    preview = await inference.preview_settlement_results(batch)
    assert preview.partial == ((partial_user, 2 * OG),)
    assert dict(preview.failed) == {
        bad_sig_user: SettlementStatus.INVALID_SIGNATURE,
        tampered_user: SettlementStatus.INVALID_SIGNATURE,
        stranger: SettlementStatus.INVALID_SIGNATURE,  # no account reads as a bad signature
        ok_user: SettlementStatus.PROVIDER_MISMATCH,
    }

    before = await provider.wallet.balance()
    receipt, results = await inference.settle_fees_with_tee(batch)
    # A failed entry reports its whole fee as unsettled; a partial one what was missing.
    assert [(r.user, r.status, r.unsettled) for r in results] == [
        (ok_user, SettlementStatus.SUCCESS, 0),
        (partial_user, SettlementStatus.PARTIAL, 2 * OG),
        (bad_sig_user, SettlementStatus.INVALID_SIGNATURE, 10**15),
        (tampered_user, SettlementStatus.INVALID_SIGNATURE, 2 * 10**15),
        (stranger, SettlementStatus.INVALID_SIGNATURE, 10**15),
        (ok_user, SettlementStatus.PROVIDER_MISMATCH, 10**15),
    ]
    assert await provider.wallet.balance() == before + 10**15 + OG - receipt.fee
    assert (await chain.inference().get_account(partial_user, provider.address)).nonce == 1  # consumed

    # The same nonce again, and a lower one, are refused.
    replay = [_sign(chain, provider, ok_user, 10**15, 1), _sign(chain, provider, partial_user, 10**15, 1)]
    assert [r for _, r in (await inference.preview_settlement_results(replay)).failed] == [
        SettlementStatus.INVALID_NONCE
    ] * 2
    _, results = await inference.settle_fees_with_tee(replay)
    assert [r.status for r in results] == [SettlementStatus.INVALID_NONCE] * 2

    # Preview does not simulate a user repeated in one batch; eth_call of the settlement does.
    repeated = [_sign(chain, provider, ok_user, 10**12, n) for n in (100, 101, 101)]
    assert (await inference.preview_settlement_results(repeated)).all_succeed
    assert await inference.simulate_settlement(repeated) == [
        SettlementStatus.SUCCESS,
        SettlementStatus.SUCCESS,
        SettlementStatus.INVALID_NONCE,
    ]


async def test_no_tee_signer_and_batch_limits(
    devnet: Devnet, chain: ChainClient, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = await register_provider()
    inference = chain.inference(provider.wallet)
    user = await _funded_user(chain, new_account, provider, OG)
    await chain.inference(devnet.owner_wallet()).revoke_tee_signer_acknowledgement(provider.address)
    _, results = await inference.settle_fees_with_tee([_sign(chain, provider, user, 10**15, 1)])
    assert [r.status for r in results] == [SettlementStatus.NO_TEE_SIGNER]

    with pytest.raises(NoSettlementsProvided):
        await inference.settle_fees_with_tee([])
    with pytest.raises(TooManySettlements) as too_many:
        await inference.settle_fees_with_tee([_sign(chain, provider, user, 1, n) for n in range(2, 53)])
    assert (too_many.value.count, too_many.value.max) == (51, 50)
