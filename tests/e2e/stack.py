"""A provider as the journeys meet it: verifiable service + broker (production wiring, settlement
engine included) for a fresh, owner-acknowledged provider on the test's devnet."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.asgi import serve
from zgserve.broker.app import create_app as create_broker
from zgserve.broker.settings import load_settings as load_broker_settings
from zgserve.common.net import free_port
from zgserve.devnet.network import Devnet
from zgserve.service.app import create_app as create_service
from zgserve.service.settings import load_settings as load_service_settings

INPUT_PRICE = 1_000_000_000
OUTPUT_PRICE = 2_000_000_000


@dataclass(frozen=True)
class Provider:
    address: str
    broker_url: str


@contextlib.asynccontextmanager
async def provider_stack(
    devnet: Devnet, tmp_path: Path, *, target_url: str | None, model: str
) -> AsyncIterator[Provider]:
    """Service in front of ``target_url`` (None: embedded llama.cpp), broker in front of it."""
    service_settings = load_service_settings(
        target_url=target_url,
        tee="simulated",
        gpu_evidence="off",
        store_path=tmp_path / "signatures.sqlite3",
        allowed_params=["fake"] if target_url else [],  # the fake backend's behaviour field
    )
    async with serve(create_service(service_settings)) as service_url:
        provider = await devnet.new_account()
        port = free_port()
        settings = load_broker_settings(
            None,
            servingUrl=f"http://127.0.0.1:{port}",
            targetUrl=service_url + "/v1",
            model=model,
            inputPrice=INPUT_PRICE,
            outputPrice=OUTPUT_PRICE,
            privateKeys=[provider.private_key],
            network={"deployment": str(devnet.deployment.save(tmp_path / "deployment.json"))},
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/broker.db"},
            tee={"backend": "simulated", "keyFile": str(tmp_path / "broker-tee.json")},
            auth={"accountCacheSeconds": 0.5},
        )
        async with serve(create_broker(settings), port) as broker_url:
            # The contract owner vouches for the provider's TEE signer (as on testnet/mainnet).
            owner = devnet.chain.inference(devnet.owner_wallet())
            await owner.acknowledge_tee_signer_by_owner(provider.address)
            yield Provider(provider.address, broker_url)
