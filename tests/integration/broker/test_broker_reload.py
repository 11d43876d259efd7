"""Prices change without downtime: the config file read again on SIGHUP, on-chain and billing together."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.integration.broker.conftest import (
    INPUT_PRICE,
    OUTPUT_PRICE,
    FundedUser,
    RunningBroker,
    StartBroker,
    make_token,
)
from zgserve.broker.app import BrokerDeps
from zgserve.broker.db import repo
from zgserve.broker.reload import reload_catalog
from zgserve.devnet.network import Devnet

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


def write_config(broker: RunningBroker, path: Path, **changes: Any) -> Path:
    """The running broker's configuration as a file, with ``changes``."""
    data = broker.core.settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["privateKeys"] = [broker.provider.private_key]
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


async def chat(s: aiohttp.ClientSession, broker: RunningBroker, auth: str, **extra: Any) -> dict[str, Any]:
    url = broker.url + "/v1/proxy/chat/completions"
    async with s.post(url, json=CHAT | extra, headers={"Authorization": auth}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json() if not extra.get("stream") else {"text": await resp.text()}
        return body


async def fees(broker: RunningBroker, user: str) -> list[tuple[int, int, int]]:
    async with broker.core.db.connect() as conn:
        page = await repo.list_requests(conn, user=user, order="asc")
    return [(r.input_price, r.output_price, r.fee) for r in page.items]


async def test_reload_updates_chain_and_billing_together(
    start_broker: StartBroker, funded_user: FundedUser, devnet: Devnet, tmp_path: Path
) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        await chat(s, broker, auth)
        # A slow stream admitted before the change keeps the prices it was admitted with.
        slow = asyncio.create_task(
            chat(
                s,
                broker,
                auth,
                stream=True,
                fake={"chunks": 6, "chunk_delay_ms": 150, "separate_writes": True},
            )
        )
        await asyncio.sleep(0.3)
        path = write_config(
            broker, tmp_path / "provider.yaml", inputPrice=2 * INPUT_PRICE, outputPrice=3 * OUTPUT_PRICE
        )
        assert await reload_catalog(broker.core, path) == "updated"
        await slow
        await chat(s, broker, auth)

        service = await devnet.chain.inference().get_service(broker.provider.address)
        assert (service.input_price, service.output_price) == (2 * INPUT_PRICE, 3 * OUTPUT_PRICE)
        prices = [(i, o) for i, o, _ in await fees(broker, user.address)]
        assert prices == [
            (INPUT_PRICE, OUTPUT_PRICE),
            (INPUT_PRICE, OUTPUT_PRICE),  # the stream admitted before the reload
            (2 * INPUT_PRICE, 3 * OUTPUT_PRICE),
        ]
        async with s.get(broker.url + "/v1/models") as resp:
            listed = (await resp.json())["data"][0]["pricing"]
        assert (int(listed["prompt"]), int(listed["completion"])) == (2 * INPUT_PRICE, 3 * OUTPUT_PRICE)

        # A file that does not load changes nothing.
        bad = tmp_path / "bad.yaml"
        bad.write_text("servingUrl: [")
        assert await reload_catalog(broker.core, bad) == "refused"
        assert broker.core.catalog.default.pricing.input_price == 2 * INPUT_PRICE


async def test_sighup_reloads_the_config_file(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path
) -> None:
    path = tmp_path / "provider.yaml"
    async with start_broker(deps=BrokerDeps(config_file=path)) as broker:
        write_config(broker, path, models=[{"id": "fake-model", "inputPrice": 5, "outputPrice": 7}])
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if broker.core.catalog.default.pricing.input_price == 5:
                break
            await asyncio.sleep(0.05)
        assert (
            broker.core.catalog.default.pricing.input_price,
            broker.core.catalog.default.pricing.output_price,
        ) == (5, 7)
