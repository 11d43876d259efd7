"""Access rules that hold: user routes check revocation and generation, the admin API and
``/metrics`` are out of reach of web pages, and refused tokens cost the broker no memory."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from zgserve.broker.app import BrokerDeps
from zgserve.broker.auth import token_digest_message
from zgserve.broker.core import UnsettledReport
from zgserve.common.net import free_port
from zgserve.common.signing import Signer, eip191_digest
from zgserve.devnet.network import Devnet

EVIL = "https://evil.example"


def code(payload: dict[str, Any]) -> str:
    return str(payload["error"]["code"])


async def get_json(s: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with s.get(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_user_routes_refuse_revoked_keys_and_old_generations(
    start_broker: StartBroker, funded_user: FundedUser, devnet: Devnet
) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        provider = broker.provider.address
        user = await funded_user(provider)
        key = make_token(user.private_key, provider, token_id=5, expires_in_ms=0)
        ephemeral = make_token(user.private_key, provider)
        paths = [f"/v1/user/{user.address}/unsettledfee", f"/v1/user/{user.address}/settlements"]
        for path in paths:
            for auth in (key, ephemeral):
                assert (await get_json(s, broker.url + path, headers={"Authorization": auth}))[0] == 200
        user_chain = devnet.chain.inference(devnet.chain.wallet(user.private_key))

        await user_chain.revoke_token(provider, 5)
        await asyncio.sleep(0.6)  # past the account cache (accountCacheSeconds 0.5)
        for path in paths:
            status, body = await get_json(s, broker.url + path, headers={"Authorization": key})
            assert (status, code(body)) == (401, "token_revoked"), path
            assert (await get_json(s, broker.url + path, headers={"Authorization": ephemeral}))[0] == 200

        await user_chain.revoke_all_tokens(provider)
        await asyncio.sleep(0.6)
        for path in paths:
            status, body = await get_json(s, broker.url + path, headers={"Authorization": ephemeral})
            assert (status, code(body)) == (401, "token_generation_mismatch"), path
        fresh = make_token(user.private_key, provider, generation=1)
        for path in paths:
            assert (await get_json(s, broker.url + path, headers={"Authorization": fresh}))[0] == 200
        # A nonce that is not the user's own settlement is a 404 only for the right token.
        status, body = await get_json(s, broker.url + paths[1] + "/1", headers={"Authorization": ephemeral})
        assert (status, code(body)) == (401, "token_generation_mismatch")


async def test_cors_only_on_sdk_routes(start_broker: StartBroker, funded_user: FundedUser) -> None:
    deps = BrokerDeps(settlement_factory=UnsettledReport)
    async with start_broker(deps=deps) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        origin = {"Origin": EVIL}
        # The SDK's routes: readable from a browser, preflights answered.
        for path, headers in [
            ("/v1/quote", origin),
            ("/v1/models", origin),
            (f"/v1/user/{user.address}/unsettledfee", origin | {"Authorization": auth}),
        ]:
            async with s.get(broker.url + path, headers=headers) as resp:
                assert resp.status == 200, path
                assert resp.headers.get("access-control-allow-origin") == "*", path
        preflight = origin | {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        async with s.options(broker.url + "/v1/proxy/chat/completions", headers=preflight) as resp:
            assert resp.status == 200
            assert resp.headers.get("access-control-allow-origin") == "*"
            assert "ZG-Res-Key" in (await _exposed(s, broker.url, auth, origin))

        # The admin API and /metrics: no CORS headers, preflights refused.
        for path in ["/v1/settle", "/v1/service", "/v1/sync-account", "/v1/request", "/v1/user", "/metrics"]:
            async with s.options(broker.url + path, headers=preflight) as resp:
                assert resp.status == 405, path
                assert code(await resp.json()) == "method_not_allowed"
                assert "access-control-allow-origin" not in resp.headers, path
                assert "access-control-allow-methods" not in resp.headers, path
        for path in ["/v1/request", "/v1/user", f"/v1/user/{user.address}", "/v1/service", "/metrics"]:
            async with s.get(broker.url + path, headers=origin) as resp:
                assert "access-control-allow-origin" not in resp.headers, path

        # A cross-site "simple" request (no preflight) cannot drive the admin API.
        for path in ["/v1/settle", "/v1/sync-account", "/v1/service"]:
            async with s.post(
                broker.url + path, data=b"{}", headers=origin | {"Content-Type": "text/plain"}
            ) as resp:
                assert resp.status == 415, path
                assert code(await resp.json()) == "json_content_type_required"
                assert "access-control-allow-origin" not in resp.headers
            async with s.post(
                broker.url + path,
                data=b"users=x",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as resp:
                assert resp.status == 415, path
        # Browsers say where a request comes from; DNS rebinding gives another Host.
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Host": "evil.example"},
        ):
            async with s.post(broker.url + "/v1/settle", json={}, headers=headers) as resp:
                assert resp.status == 403, headers
                assert code(await resp.json()) == "admin_forbidden"
        # The provider's own tools (JSON, from loopback) still work.
        async with s.post(broker.url + "/v1/settle", json={}) as resp:
            assert resp.status == 200
        async with s.get(
            broker.url + "/v1/request", headers={"Host": f"localhost:{broker.url.rsplit(':', 1)[1]}"}
        ) as r:
            assert r.status == 200


async def _exposed(s: aiohttp.ClientSession, url: str, auth: str, origin: dict[str, str]) -> str:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    async with s.post(
        url + "/v1/proxy/chat/completions", json=body, headers=origin | {"Authorization": auth}
    ) as resp:
        assert resp.status == 200
        return resp.headers.get("access-control-expose-headers", "")


async def test_metrics_behind_the_admin_token_or_on_its_own_port(start_broker: StartBroker) -> None:
    async with (
        start_broker(admin={"token": "s3cret"}) as broker,  # requireToken follows admin.token
        aiohttp.ClientSession() as s,
    ):
        async with s.get(broker.url + "/metrics") as resp:
            assert resp.status == 403
            assert code(await resp.json()) == "admin_forbidden"
        async with s.get(broker.url + "/metrics", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 403
        async with s.get(broker.url + "/metrics", headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200
            assert "zgbroker_requests_total" in await resp.text()
    async with (
        start_broker(admin={"token": "s3cret"}, metrics={"requireToken": False}) as broker,
        aiohttp.ClientSession() as s,
        s.get(broker.url + "/metrics") as resp,
    ):
        assert resp.status == 200  # the operator opted out
    port = free_port()
    async with start_broker(metrics={"listen": f"127.0.0.1:{port}"}) as broker, aiohttp.ClientSession() as s:
        async with s.get(broker.url + "/metrics") as resp:
            assert resp.status == 404
        async with s.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert "zgbroker_requests_total" in await resp.text()
    # Closed with the broker.
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                raise AssertionError(f"metrics still served: {resp.status}")
        except aiohttp.ClientConnectionError:
            pass


def big_token(user: Signer, provider: str, nonce: str) -> str:
    now = int(time.time() * 1000)
    raw = json.dumps(
        {
            "address": user.address,
            "provider": provider,
            "timestamp": now,
            "expiresAt": now + 3_600_000,
            "nonce": nonce,
            "generation": 0,
            "tokenId": 255,
        },
        separators=(",", ":"),
    )
    signature = user.sign_digest(eip191_digest(token_digest_message(raw)))
    return "Bearer app-sk-" + base64.b64encode(f"{raw}|{signature}".encode()).decode()


async def test_refused_tokens_are_not_cached(start_broker: StartBroker, funded_user: FundedUser) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        provider = broker.provider.address
        cache = broker.core.auth.verifier.cache
        stranger = Signer.generate()  # a wallet with no account
        url = broker.url + "/v1/proxy/chat/completions"
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        # 1 MB nonces, validly signed: refused on size before any decoding.
        for i in range(20):
            auth = big_token(stranger, provider, f"{i}-" + "x" * (1 << 20))
            async with s.post(url, json=body, headers={"Authorization": auth}) as resp:
                assert resp.status == 401
                assert code(await resp.json()) == "token_too_large"
        # Tokens of normal size from a wallet with no account: verified, refused, not kept.
        for i in range(30):
            auth = big_token(stranger, provider, f"{i:032d}")
            async with s.post(url, json=body, headers={"Authorization": auth}) as resp:
                assert resp.status == 402
                assert code(await resp.json()) == "account_not_found"
        assert len(cache) == 0
        assert cache.size_bytes == 0
        # A real user's token is kept once it passed every check.
        user = await funded_user(provider)
        auth = make_token(user.private_key, provider)
        async with s.get(
            f"{broker.url}/v1/user/{user.address}/unsettledfee", headers={"Authorization": auth}
        ) as r:
            assert r.status == 200
        assert len(cache) == 1
