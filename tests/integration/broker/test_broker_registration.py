"""Registration sends a transaction only when something changed, and keeps the acknowledgement when it can."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.asgi import serve
from tests.integration.broker.conftest import StartBroker
from zgserve.broker import registration
from zgserve.broker.app import create_app
from zgserve.broker.core import ServiceState
from zgserve.broker.settings import load_settings
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet

TARGET_TEE = "0x" + "ab" * 20
SIGNER = "0x" + "cd" * 20


def settings(**extra: Any) -> Any:
    return load_settings(
        None,
        servingUrl="http://127.0.0.1:1",
        targetUrl="http://127.0.0.1:2/v1",
        model="m",
        inputPrice=1,
        outputPrice=2,
        registration={"additionalInfo": {"VerifierURL": "https://example.invalid"}},
        **extra,
    )


async def test_sync_service_sends_only_changes(devnet: Devnet) -> None:
    provider = await devnet.new_account()
    inference = devnet.chain.inference(devnet.chain.wallet(provider.private_key))
    owner = devnet.chain.inference(devnet.owner_wallet())
    cfg = settings()
    state = ServiceState(
        url="http://127.0.0.1:1", model="m", service_type="chatbot", input_price=1, output_price=2
    )

    async def sync() -> str:
        wanted = registration.service_params(cfg, state, tee_signer=SIGNER, target_tee_address=TARGET_TEE)
        return await registration.sync_service(inference, provider.address, wanted, stake=100 * OG)

    balance0 = await devnet.chain.balance(provider.address)
    assert await sync() == "registered"
    service = await inference.get_service(provider.address)
    info = json.loads(service.additional_info)
    assert info == {
        "TargetSeparated": True,
        "TargetTeeAddress": TARGET_TEE,
        "VerifierURL": "https://example.invalid",
    }
    assert service.tee_signer_address.lower() == SIGNER
    assert balance0 - await devnet.chain.balance(provider.address) >= 100 * OG  # the stake
    await owner.acknowledge_tee_signer_by_owner(provider.address)

    nonce = await devnet.chain.pending_nonce(provider.address)
    assert await sync() == "unchanged"
    assert await devnet.chain.pending_nonce(provider.address) == nonce  # no transaction at all

    state.input_price = 5
    state.url = "http://127.0.0.1:3"
    assert await sync() == "updated"
    service = await inference.get_service(provider.address)
    assert (service.input_price, service.url) == (5, "http://127.0.0.1:3")
    assert service.tee_signer_acknowledged  # a price or URL change keeps the owner's acknowledgement

    state.model = "m2"
    assert await sync() == "updated"
    assert not (await inference.get_service(provider.address)).tee_signer_acknowledged


async def test_restart_with_same_config_sends_nothing_and_cors(
    start_broker: StartBroker, devnet: Devnet
) -> None:
    async with start_broker() as broker:
        provider = broker.provider
        nonce = await devnet.chain.pending_nonce(provider.address)
        async with aiohttp.ClientSession() as s:
            preflight = {
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            }
            async with s.options(broker.url + "/v1/proxy/chat/completions", headers=preflight) as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
                assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
            async with s.get(broker.url + "/v1/quote", headers={"Origin": "https://app.example"}) as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert "ZG-Res-Key" in resp.headers["Access-Control-Expose-Headers"]
    # A restart with the same key and settings finds the on-chain service right: no transaction.
    same = broker.core.settings
    async with serve(create_app(same), int(same.serving_url.rsplit(":", 1)[1])):
        assert await devnet.chain.pending_nonce(provider.address) == nonce
