"""Provider registration, updates and the owner's acknowledgement of TEE signers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from zgserve.chain import ChainClient
from zgserve.chain.errors import (
    CannotAddStakeWhenUpdating,
    InsufficientStake,
    LimitTooLarge,
    NotOwner,
    ServiceNotExist,
)
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet
from zgserve.devnet.testing import PROVIDER_STAKE, NewAccount, new_tee_key, service_params


async def test_register_update_acknowledge_remove(
    devnet: Devnet, chain: ChainClient, new_account: NewAccount
) -> None:
    provider = chain.wallet((await new_account()).private_key)
    inference = chain.inference(provider)
    owner = chain.inference(devnet.owner_wallet())
    _, tee_address = new_tee_key()
    params = service_params(tee_address)

    with pytest.raises(ServiceNotExist) as missing:
        await inference.get_service(provider.address)
    assert missing.value.provider == provider.address
    with pytest.raises(InsufficientStake) as low:
        await inference.add_or_update_service(params, stake=50 * OG)
    assert (low.value.provided, low.value.required) == (50 * OG, PROVIDER_STAKE)

    before = await provider.balance()
    receipt = await inference.add_or_update_service(params, stake=PROVIDER_STAKE)
    assert await provider.balance() == before - PROVIDER_STAKE - receipt.fee
    assert [e.args["amount"] for e in inference.events_in(receipt, "ProviderStaked")] == [PROVIDER_STAKE]
    service = await inference.get_service(provider.address)
    assert service.params() == params
    assert service.provider == provider.address
    assert not service.tee_signer_acknowledged
    assert await inference.service_exists(provider.address)
    assert provider.address in [s.provider for s in await inference.get_all_services()]

    with pytest.raises(NotOwner, match="Ownable: caller is not the owner"):
        await inference.acknowledge_tee_signer_by_owner(provider.address)
    await owner.acknowledge_tee_signer_by_owner(provider.address)
    assert (await inference.get_service(provider.address)).tee_signer_acknowledged

    with pytest.raises(CannotAddStakeWhenUpdating):
        await inference.add_or_update_service(params, stake=1)
    # Price and URL changes keep the owner's acknowledgement...
    cheaper = replace(params, input_price=7, output_price=9, url="http://127.0.0.1:2")
    await inference.add_or_update_service(cheaper)
    service = await inference.get_service(provider.address)
    assert (service.input_price, service.output_price, service.url) == (7, 9, "http://127.0.0.1:2")
    assert service.tee_signer_acknowledged
    # ...a model change resets it.
    await inference.add_or_update_service(replace(cheaper, model="another-model"))
    service = await inference.get_service(provider.address)
    assert service.model == "another-model"
    assert not service.tee_signer_acknowledged

    await owner.acknowledge_tee_signer_by_owner(provider.address)
    await owner.revoke_tee_signer_acknowledgement(provider.address)
    assert not (await inference.get_service(provider.address)).tee_signer_acknowledged

    updates = await inference.get_events("ServiceUpdated", receipt.block_number, service=provider.address)
    assert [e.args["model"] for e in updates] == [params.model, params.model, "another-model"]

    before = await provider.balance()
    receipt = await inference.remove_service()
    assert await provider.balance() == before + PROVIDER_STAKE - receipt.fee
    assert not await inference.service_exists(provider.address)


async def test_paging_limit_is_typed(chain: ChainClient) -> None:
    with pytest.raises(LimitTooLarge) as too_large:
        await chain.inference().read("getAccountsByProvider", chain.config.inference, 0, 51)
    assert (too_large.value.limit, too_large.value.max) == (51, 50)
