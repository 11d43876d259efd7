"""Embeddings, images and audio fees settle like chat: recorded = settled = on-chain, to the neuron."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from tests.integration.broker.media_stack import MediaStack, media_stack, upload
from tests.integration.settlement.conftest import engine_deps
from tests.media_bodies import wav
from zgserve.broker.db import repo
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MediaStack]:
    async with media_stack(tmp_path_factory.mktemp("media")) as running:
        yield running


async def test_media_fees_settle_to_the_neuron(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser, private_devnet: Devnet
) -> None:
    net = private_devnet
    async with (
        start_broker(on=net, deps=engine_deps(intervalSeconds=3600), models=stack.models()) as broker,
        aiohttp.ClientSession() as s,
    ):
        provider = broker.provider.address
        user = await funded_user(provider, amount=OG, on=net)
        auth = {"Authorization": make_token(user.private_key, provider)}
        url = broker.url + "/v1/proxy"
        charged = 0
        requests: list[tuple[str, object]] = [
            ("/embeddings", {"model": "embed", "input": "settle this embedding"}),
            ("/images/generations", {"model": "painter", "prompt": "a fox", "n": 2, "size": "64x64"}),
            ("/audio/speech", {"model": "voice", "input": "Settled on chain."}),
        ]
        for path, body in requests:
            async with s.post(url + path, json=body, headers=auth) as r:
                assert r.status == 200, await r.text()
                charged += int(r.headers["X-0G-Fee"])
        form = upload({"model": "ears"}, {"file": ("a.wav", wav(40_000), "audio/wav")})
        async with s.post(url + "/audio/transcriptions", data=form, headers=auth) as r:
            assert r.status == 200, await r.text()
            assert json.loads(await r.read())["text"].startswith("stand-in")
            charged += int(r.headers["X-0G-Fee"])
        async with broker.core.db.connect() as conn:
            recorded = await repo.unsettled_by_user(conn)
        assert recorded == {user.address.lower(): charged}

        async with s.post(broker.url + "/v1/settle", json={}) as r:
            assert r.status == 200, await r.text()
            report = await r.json()
        assert {e["status"] for e in report["settlements"]} == {"success"}
        [account] = await broker.core.inference.get_batch_accounts_by_users([user.address])
        assert OG - account.balance == charged  # on-chain, to the neuron
        async with broker.core.db.connect() as conn:
            assert await repo.total_unsettled(conn) == 0
