"""Every way a request can be refused, with real tokens on the devnet: own status and code, never 500."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.fakes.openai_backend import FakeOpenAIBackend
from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from zgserve.broker.app import BrokerDeps
from zgserve.broker.core import UnsettledReport
from zgserve.broker.db import repo
from zgserve.common.money import OG
from zgserve.common.net import free_port
from zgserve.devnet.network import Devnet

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


async def post(
    session: aiohttp.ClientSession, url: str, auth: str | None, body: Any = CHAT, **kw: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": auth} if auth else {}
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url + "/v1/proxy/chat/completions", headers=headers, **kwargs, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


def code(payload: dict[str, Any]) -> str:
    return str(payload["error"]["code"])


async def test_token_and_account_rejections(
    start_broker: StartBroker, funded_user: FundedUser, devnet: Devnet, new_account: Any
) -> None:
    # A generous per-answer limit, so that one request can ask for more than the balance covers.
    limits = {"server": {"maxBodyBytes": 4096}, "billing": {"maxOutputTokens": 10**9}}
    async with start_broker(**limits) as broker, aiohttp.ClientSession() as s:
        provider = broker.provider.address
        user = await funded_user(provider)
        good = make_token(user.private_key, provider)
        status, body = await post(s, broker.url, good)
        assert status == 200
        assert body["usage"]["completion_tokens"] > 0

        cases = {
            "missing": (None, 401, "missing_token"),
            "garbage": ("Bearer app-sk-%%%", 401, "invalid_token"),
            "expired": (make_token(user.private_key, provider, expires_in_ms=-1000), 401, "token_expired"),
            "wrong provider": (make_token(user.private_key, "0x" + "ab" * 20), 403, "wrong_provider"),
            "bad signature": (
                make_token(user.private_key, provider, sign_with=(await new_account()).private_key),
                401,
                "invalid_signature",
            ),
            "unknown user": (
                make_token((await new_account()).private_key, provider),
                402,
                "account_not_found",
            ),
            "future generation": (
                make_token(user.private_key, provider, generation=3),
                401,
                "token_generation_mismatch",
            ),
        }
        for name, (auth, want_status, want_code) in cases.items():
            status, body = await post(s, broker.url, auth)
            assert (status, code(body)) == (want_status, want_code), name

        status, body = await post(s, broker.url, good, body=b'{"messages": [')
        assert (status, code(body)) == (400, "invalid_json")
        status, body = await post(s, broker.url, good, body=b"[1, 2]")
        assert (status, code(body)) == (400, "invalid_json")
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        status, body = await post(s, broker.url, good, body=big)
        assert (status, code(body)) == (413, "request_too_large")
        status, body = await post(s, broker.url, good, body={**CHAT, "max_tokens": 10**9})
        assert (status, code(body)) == (402, "insufficient_balance")

        # A failed backend call comes back as 502 with an OpenAI error and is charged nothing.
        status, body = await post(s, broker.url, good, body={**CHAT, "fake": {"status": 500}})
        assert (status, code(body)) == (502, "upstream_error")

        # Revoking API key 5 ends that key within the cache window; other keys live on.
        key5 = make_token(user.private_key, provider, token_id=5, expires_in_ms=0)
        key6 = make_token(user.private_key, provider, token_id=6, expires_in_ms=0)
        assert (await post(s, broker.url, key5))[0] == 200
        inference = devnet.chain.inference(devnet.chain.wallet(user.private_key))
        await inference.revoke_token(provider, 5)
        await asyncio.sleep(0.6)  # accountCacheSeconds is 0.5 in these tests
        status, body = await post(s, broker.url, key5)
        assert (status, code(body)) == (401, "token_revoked")
        assert (await post(s, broker.url, key6))[0] == 200

        # revokeAllTokens bumps the generation: every older token is refused within the cache
        # window, and a token of the new generation works at once (a refusal re-reads the chain).
        await inference.revoke_all_tokens(provider)
        await asyncio.sleep(0.6)
        status, body = await post(s, broker.url, good)
        assert (status, code(body)) == (401, "token_generation_mismatch")
        assert (await post(s, broker.url, make_token(user.private_key, provider, generation=1)))[0] == 200

        # Debt left by a PARTIAL settlement refuses the user until it is paid.
        async with broker.core.db.begin() as conn:
            await repo.set_debt(conn, user.address, 7)
        broker.core.on_settled([user.address])
        fresh = make_token(user.private_key, provider, generation=1)
        status, body = await post(s, broker.url, fresh)
        assert (status, code(body)) == (402, "outstanding_debt")
        async with broker.core.db.begin() as conn:
            await repo.set_debt(conn, user.address, 0)
        broker.core.on_settled([user.address])
        assert (await post(s, broker.url, fresh))[0] == 200

        # Charged: the four successful calls only.
        async with broker.core.db.connect() as conn:
            page = await repo.list_requests(conn, user=user.address)
        assert page.total == 5
        assert not any(r.status != "complete" for r in page.items)

        async with s.get(broker.url + "/metrics") as resp:
            text = await resp.text()
        assert 'zgbroker_auth_rejections_total{reason="token_revoked"}' in text
        assert 'status="500"' not in text.replace('route="/v1/proxy/chat/completions",status="500"', "")


async def test_unacknowledged_account(
    start_broker: StartBroker, funded_user: FundedUser, private_devnet: Devnet
) -> None:
    async with start_broker(on=private_devnet) as broker, aiohttp.ClientSession() as s:
        provider = broker.provider.address
        user = await funded_user(provider, amount=1 * OG, on=private_devnet)
        chain = private_devnet.chain
        ledger = chain.ledger(chain.wallet(user.private_key))
        # Only an empty account may withdraw its acknowledgement: refund everything first.
        await ledger.retrieve_fund([provider])
        await private_devnet.increase_time(3601)
        await ledger.retrieve_fund([provider])
        await chain.inference(chain.wallet(user.private_key)).acknowledge_tee_signer(provider, False)
        status, body = await post(s, broker.url, make_token(user.private_key, provider))
        assert (status, code(body)) == (403, "account_not_acknowledged")


async def test_upstream_down_and_anonymous_routes(start_broker: StartBroker, funded_user: FundedUser) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with (
        start_broker(targetUrl=dead, registration={"teeAddress": "0x" + "12" * 20}) as broker,
        aiohttp.ClientSession() as s,
    ):
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        status, body = await post(s, broker.url, auth)
        assert (status, code(body)) == (503, "upstream_unavailable")
        async with s.get(broker.url + "/v1/proxy/signature/chatcmpl-x") as resp:
            assert resp.status == 503
        async with broker.core.db.connect() as conn:
            assert (await repo.list_requests(conn)).total == 0
        # Nothing stays reserved after the failure.
        assert (await post(s, broker.url, auth))[0] == 503


async def test_user_routes_and_admin_guard(start_broker: StartBroker, funded_user: FundedUser) -> None:
    # The stand-in engine: POST /v1/settle reports what is unsettled (the real engine has its own tests).
    deps = BrokerDeps(settlement_factory=UnsettledReport)
    async with start_broker(admin={"token": "s3cret"}, deps=deps) as broker, aiohttp.ClientSession() as s:
        provider = broker.provider.address
        user = await funded_user(provider)
        auth = make_token(user.private_key, provider)
        status, body = await post(s, broker.url, auth)
        assert status == 200
        chat_id = body["id"]
        # The SDK fetches these without credentials.
        async with s.get(f"{broker.url}/v1/proxy/signature/{chat_id}?model=fake-model") as resp:
            signed = await resp.json()
            assert resp.status == 200
            assert signed["signature"].startswith("0x")
        async with s.get(broker.url + "/v1/proxy/attestation/report?model=fake-model") as resp:
            assert resp.status == 200
            assert (await resp.json())["signing_address"] == broker.core.service.tee_address
        async with s.get(broker.url + "/v1/models") as resp:
            assert (await resp.json())["data"][0]["id"] == "fake-model"
        # Paths outside the route table are refused, with or without a token, never forwarded.
        async with s.get(broker.url + "/v1/proxy/models") as resp:
            assert resp.status == 200  # listing models needs no token
        for headers in ({}, {"Authorization": auth}):
            async with s.post(broker.url + "/v1/proxy/moderate", json={"input": "x"}, headers=headers) as r:
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "route_not_found"
        url = f"{broker.url}/v1/user/{user.address}/unsettledfee"
        async with s.get(url, headers={"Authorization": auth}) as resp:
            fee = (
                body["usage"]["prompt_tokens"] * 1_000_000_000
                + body["usage"]["completion_tokens"] * 2_000_000_000
            )
            assert await resp.json() == {"unsettledFee": str(fee)}
        other = await funded_user(provider)
        async with s.get(url, headers={"Authorization": make_token(other.private_key, provider)}) as resp:
            assert resp.status == 403
            assert code(await resp.json()) == "address_mismatch"
        async with s.get(url) as resp:
            assert resp.status == 401

        # Admin: the configured token is required, from loopback too.
        async with s.get(broker.url + "/v1/request") as resp:
            assert resp.status == 403
            assert code(await resp.json()) == "admin_forbidden"
        admin = {"Authorization": "Bearer s3cret"}
        async with s.get(broker.url + f"/v1/request?user={user.address}&limit=1", headers=admin) as resp:
            page = await resp.json()
            assert page["metadata"]["total"] == 1
            assert page["fee"] == str(fee)
        async with s.get(broker.url + "/v1/request?limit=0", headers=admin) as resp:
            assert resp.status == 400
        async with s.get(broker.url + f"/v1/user/{user.address}", headers=admin) as resp:
            info = await resp.json()
            assert info["unsettledFee"] == str(fee)
            assert info["acknowledged"] is True
        async with s.get(broker.url + "/v1/user", headers=admin) as resp:
            assert (await resp.json())["metadata"]["total"] == 2
        async with s.post(broker.url + "/v1/sync-account", headers=admin) as resp:
            assert (await resp.json()) == {"synced": 2}
        async with s.post(broker.url + "/v1/settle", headers=admin) as resp:
            report = await resp.json()
            assert report["settled"] is False
            assert report["unsettled"] == {user.address.lower(): str(fee)}
        async with s.get(broker.url + "/v1/service", headers=admin) as resp:
            svc = await resp.json()
            assert svc["onChain"]["teeSignerAcknowledged"] is True
        # A price change keeps the owner's acknowledgement; the new price applies at once.
        body_update = {"inputPrice": "3", "outputPrice": 4, "URL": broker.url, "Model": "fake-model"}
        async with s.post(broker.url + "/v1/service", headers=admin, json=body_update) as resp:
            assert (await resp.json())["outcome"] == "updated"
        async with s.get(broker.url + "/v1/service", headers=admin) as resp:
            svc = await resp.json()
            assert svc["onChain"]["inputPrice"] == "3"
            assert svc["onChain"]["teeSignerAcknowledged"] is True
        async with s.post(broker.url + "/v1/service", headers=admin, json={"inputPrice": 1.5}) as resp:
            assert resp.status == 400
        status, body = await post(s, broker.url, auth)
        async with broker.core.db.connect() as conn:
            newest = (await repo.list_requests(conn, user=user.address, limit=1)).items[0]
        assert newest.fee == body["usage"]["prompt_tokens"] * 3 + body["usage"]["completion_tokens"] * 4


async def test_client_leaving_mid_stream_pays_what_was_delivered(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        body = {**CHAT, "stream": True, "fake": {"chunks": 40, "chunk_delay_ms": 20}}
        async with s.post(
            broker.url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["ZG-Res-Key"].startswith("chatcmpl-")
            seen = 0
            async for _ in resp.content.iter_any():
                seen += 1
                if seen >= 5:
                    break
            resp.close()
        for _ in range(100):
            async with broker.core.db.connect() as conn:
                page = await repo.list_requests(conn, user=user.address)
            if page.total:
                break
            await asyncio.sleep(0.05)
        record = page.items[0]
        assert record.status == "disconnected"
        assert record.stream
        assert 3 <= record.output_tokens < 40
        assert record.fee == record.input_tokens * 1_000_000_000 + record.output_tokens * 2_000_000_000


async def test_upstream_dying_mid_stream_is_not_charged(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        body = {**CHAT, "stream": True, "fake": {"chunks": 10, "die_after": 3}}
        async with s.post(
            broker.url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}
        ) as r:
            assert r.status == 200
            text = await r.text()
        # The service ends a broken stream with an error event and [DONE]; the broker passes it on.
        assert '"error"' in text
        assert text.endswith("data: [DONE]\n\n")
        async with broker.core.db.connect() as conn:
            assert (await repo.list_requests(conn, user=user.address)).total == 0


async def test_service_vanishing_mid_stream(
    start_broker: StartBroker, funded_user: FundedUser, fake_backend: FakeOpenAIBackend
) -> None:
    # Pointed straight at the backend, whose connection is cut after 3 events.
    async with (
        start_broker(
            targetUrl=fake_backend.url + "/v1", registration={"teeAddress": "0x" + "12" * 20}
        ) as broker,
        aiohttp.ClientSession() as s,
    ):
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        body = {**CHAT, "stream": True, "fake": {"chunks": 10, "die_after": 3}}
        url = broker.url + "/v1/proxy/chat/completions"
        async with s.post(url, json=body, headers={"Authorization": auth}) as r:
            assert r.status == 200
            text = await r.text()
        assert '"upstream_broken"' in text
        assert text.endswith("data: [DONE]\n\n")
        async with broker.core.db.connect() as conn:
            assert (await repo.list_requests(conn, user=user.address)).total == 0
        assert (await post(s, broker.url, auth))[0] == 200  # the hold was released


async def test_answer_withheld_when_the_fee_cannot_be_recorded(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with start_broker(auth={"accountCacheSeconds": 60}) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        assert (await post(s, broker.url, auth))[0] == 200
        async with broker.core.db.begin() as conn:
            await conn.exec_driver_sql("ALTER TABLE broker_requests RENAME TO broken_requests")
        # The first request to find the store broken: its content went out, its end is withheld.
        stream = {**CHAT, "stream": True}
        url = broker.url + "/v1/proxy/chat/completions"
        async with s.post(url, json=stream, headers={"Authorization": auth}) as r:
            text = await r.text()
        assert '"record_failed"' in text
        assert text.endswith("data: [DONE]\n\n")
        assert text.count("[DONE]") == 1  # the service's own final event was withheld
        # From then on nothing is generated that could not be recorded: refused before the service.
        for stream_flag in (False, True):
            status, body = await post(s, broker.url, auth, body={**CHAT, "stream": stream_flag})
            assert (status, code(body)) == (503, "storage_unavailable")
        # A user whose unsettled fees cannot be read is not admitted blindly.
        other = await funded_user(broker.provider.address)
        status, body = await post(s, broker.url, make_token(other.private_key, broker.provider.address))
        assert (status, code(body)) == (503, "storage_unavailable")
