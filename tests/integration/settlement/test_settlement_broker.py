"""A real broker with the engine: its recorded fees reach the chain exactly, users can audit them."""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
from sqlalchemy import select

from tests.integration.broker.conftest import INPUT_PRICE, OUTPUT_PRICE, FundedUser, StartBroker, make_token
from tests.integration.settlement.conftest import engine_deps
from zgserve.broker.db import repo
from zgserve.broker.db.models import RequestRow
from zgserve.client.audit import HeldResponse, audit_settlement, fetch_settlements, find_double_charges
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet


async def chat(s: aiohttp.ClientSession, url: str, auth: str, *, stream: bool) -> tuple[int, Any]:
    """One completion; (status, HeldResponse or the error body)."""
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "count " * random.randint(1, 20)}],
        "max_tokens": 16,
        "stream": stream,
        "fake": {"chunks": random.randint(1, 12)},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    raw_request = json.dumps(body).encode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    async with s.post(url + "/v1/proxy/chat/completions", data=raw_request, headers=headers) as r:
        raw = await r.read()
        if r.status != 200:
            return r.status, json.loads(raw)
        response_id = r.headers["ZG-Res-Key"]
    async with s.get(f"{url}/v1/proxy/signature/{response_id}?model=fake-model") as r:
        signed = await r.json()
    held = HeldResponse.from_exchange(
        response_id, raw_request, raw, text=signed["text"], signature=signed["signature"]
    )
    return 200, held


async def test_broker_fees_settle_to_the_neuron_and_audit(
    start_broker: StartBroker, funded_user: FundedUser, private_devnet: Devnet
) -> None:
    net = private_devnet
    async with (
        start_broker(on=net, deps=engine_deps(intervalSeconds=3600)) as broker,
        aiohttp.ClientSession() as s,
    ):
        provider = broker.provider.address
        users = [await funded_user(provider, amount=OG, on=net) for _ in range(3)]
        held: dict[str, dict[str, HeldResponse]] = {}
        for i, user in enumerate(users):
            auth = make_token(user.private_key, provider)
            held[user.address] = {}
            for j in range(4 + i):
                status, h = await chat(s, broker.url, auth, stream=j % 2 == 1)
                assert status == 200, h
                held[user.address][h.response_id] = h
        async with broker.core.db.connect() as conn:
            recorded = await repo.unsettled_by_user(conn)
        assert len(recorded) == 3

        async with s.post(broker.url + "/v1/settle", json={}) as r:
            assert r.status == 200, await r.text()
            report = await r.json()
        assert len(report["transactions"]) == 1
        assert {e["status"] for e in report["settlements"]} == {"success"}

        accounts = await broker.core.inference.get_batch_accounts_by_users([u.address for u in users])
        for user, account in zip(users, accounts, strict=True):
            assert OG - account.balance == recorded[user.address.lower()]  # to the neuron
        async with broker.core.db.connect() as conn:
            assert await repo.total_unsettled(conn) == 0
            rows = (await conn.execute(select(RequestRow.settled, RequestRow.settlement_nonce))).all()
        assert all(settled and nonce == 1 for settled, nonce in rows)

        async with s.get(broker.url + "/v1/settlement") as r:
            history = await r.json()
        async with s.get(broker.url + "/metrics") as r:
            metrics = await r.text()
        samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
        assert float(samples["zgsettle_fees_settled_neuron_total"]) == sum(recorded.values())
        assert float(samples['zgsettle_entries_total{status="success"}']) == 3
        assert history["total"] == 3
        assert {i["status"] for i in history["items"]} == {"success"}

        signer = (await broker.core.inference.get_service(provider)).tee_signer_address
        for user in users:
            auth = make_token(user.private_key, provider)
            settlements = await fetch_settlements(s, broker.url, user.address, auth)
            [settlement] = settlements
            audit = audit_settlement(
                settlement,
                held[user.address],
                input_price=INPUT_PRICE,
                output_price=OUTPUT_PRICE,
                signer=signer,
                service_signer=broker.core.service.tee_address,
            )
            assert audit.ok, audit.problems
            assert audit.receipts == len(held[user.address])
            assert find_double_charges(settlements) == []

            # A tampered receipt fails, however it is tampered.
            forged = json.loads(json.dumps(settlement))
            forged["receipts"][0]["outputTokens"] += 1
            problems = audit_settlement(
                forged, held[user.address], input_price=INPUT_PRICE, output_price=OUTPUT_PRICE, signer=signer
            ).problems
            assert any("Merkle proof" in p for p in problems)
            assert any("tokens" in p for p in problems)
            forged = json.loads(json.dumps(settlement))
            forged["totalFee"] = str(int(forged["totalFee"]) + 1)
            assert not audit_settlement(
                forged, held[user.address], input_price=INPUT_PRICE, output_price=OUTPUT_PRICE, signer=signer
            ).ok
            # The user never received the response a receipt names.
            missing = dict(held[user.address])
            missing.pop(settlement["receipts"][0]["signatureId"])
            assert not audit_settlement(
                settlement, missing, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE, signer=signer
            ).ok
            # Another user's token cannot read these settlements.
            other = make_token(users[0 if user is not users[0] else 1].private_key, provider)
            async with s.get(
                f"{broker.url}/v1/user/{user.address}/settlements", headers={"Authorization": other}
            ) as r:
                assert r.status == 403
