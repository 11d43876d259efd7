"""The route table holds: no path variant reaches the service unbilled, anonymous routes are exact.

Each request is written on a raw socket, so the path reaches the broker exactly as
an attacker sends it (``curl --path-as-is``): no client-side normalisation.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from zgserve.broker.db import repo

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}

# Every way to spell a billed route that is not the canonical string itself.
CHAT_VARIANTS = [
    "/v1/proxy/./chat/completions",
    "/v1/proxy/chat/./completions",
    "/v1/proxy/chat/completions/",
    "/v1/proxy/chat/completions/.",
    "/v1/proxy//chat/completions",
    "/v1/proxy/chat//completions",
    "/v1/proxy/%2e/chat/completions",
    "/v1/proxy/%2E/chat/completions",
    "/v1/proxy/x/../chat/completions",
    "/v1/proxy/x/%2e%2e/chat/completions",
    "/v1/proxy/chat/completions%2F",
    "/v1/proxy/chat%2Fcompletions",
    "/v1/proxy/chat/completions%3Fx=1",
    "/v1/proxy/chat/completions%23frag",
    "/v1/proxy/chat/%63ompletions",
    "/v1/proxy/chat/completions;x=1",
    "/v1/proxy/chat/completions%00",
    "/v1/proxy/chat\\completions",
    "/v1/proxy/v1/chat/completions",
    "/v1/proxy/Chat/Completions",
    "/v1/proxy/chat/completions/../completions",
    "/v1/proxy/completions/",
    "/v1/proxy/./completions",
    "/v1/proxy/%2e%2e/proxy/chat/completions",
    "/v1/proxy/moderations",
    "/v1/proxy/health",
    "/v1/proxy/audio/speech/",
    "/v1/proxy/audio//transcriptions",
    "/v1/proxy/images/./edits",
    "/v1/proxy/Images/Generations",
    "/v1/proxy/embeddings%2f",
]
# Anonymous routes must not lead anywhere else on the service.
ANONYMOUS_ESCAPES = [
    "/v1/proxy/signature/../../health",
    "/v1/proxy/signature/..%2F..%2Fhealth",
    "/v1/proxy/signature/%2e%2e/%2e%2e/v1/chat/completions",
    "/v1/proxy/signature/a/b",
    "/v1/proxy/attestation/report/",
    "/v1/proxy/attestation/report/../../chat/completions",
    "/v1/proxy/models/../chat/completions",
    "/v1/proxy/v1/signature/../../../health",
]


async def raw_request(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    """Send one request with ``path`` byte for byte; the response status."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # the whole response, until the server closes
    finally:
        writer.close()
    return int(status_line.split()[1]) if status_line else 0


async def requests_recorded(broker: Any, user: str) -> int:
    async with broker.core.db.connect() as conn:
        page = await repo.list_requests(conn, user=user, limit=1000)
    return page.total


async def test_path_variants_are_refused_before_the_service(
    start_broker: StartBroker, funded_user: FundedUser, fake_backend: Any
) -> None:
    async with start_broker() as broker:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        body = json.dumps(CHAT).encode()
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        assert await raw_request(broker.url, "POST", "/v1/proxy/chat/completions", headers, body) == 200
        assert await requests_recorded(broker, user.address) == 1
        for stream in (False, True):
            payload = json.dumps({**CHAT, "stream": stream}).encode()
            for path in CHAT_VARIANTS:
                status = await raw_request(broker.url, "POST", path, headers, payload)
                assert 400 <= status < 500, (path, status)
        for path in ANONYMOUS_ESCAPES:
            for auth_headers in ({}, {"Authorization": auth}):
                status = await raw_request(broker.url, "GET", path, auth_headers)
                assert status == 404, (path, status)
        # Nothing was served without a record: still exactly the one canonical request.
        assert await requests_recorded(broker, user.address) == 1


async def test_routes_answer_with_the_table(start_broker: StartBroker, funded_user: FundedUser) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = {"Authorization": make_token(user.private_key, broker.provider.address)}
        async with s.get(broker.url + "/v1/proxy/chat/completions", headers=auth) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
        async with s.post(broker.url + "/v1/proxy/chat/completions?x=1", headers=auth, json=CHAT) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "unsupported_query"
        async with s.post(broker.url + "/v1/proxy/models", headers=auth) as resp:
            assert resp.status == 405
        async with s.get(broker.url + "/v1/proxy/anything/else", headers=auth) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "route_not_found"
        # The anonymous routes the SDK uses still answer without a token.
        async with s.get(broker.url + "/v1/proxy/attestation/report?model=fake-model") as resp:
            assert resp.status == 200
            assert "signing_address" in await resp.json()
        async with s.post(broker.url + "/v1/proxy/chat/completions", headers=auth, json=CHAT) as resp:
            assert resp.status == 200
            key = resp.headers["ZG-Res-Key"]
        async with s.get(broker.url + f"/v1/proxy/signature/{key}?model=fake-model") as resp:
            assert resp.status == 200
            assert (await resp.json())["text"]
        async with s.get(broker.url + "/v1/proxy/signature/x?nonce=1&signing_algo=ecdsa") as resp:
            assert resp.status == 404  # unknown id: the service's answer, relayed
        async with s.get(broker.url + "/v1/proxy/signature/x?signing_algo=a&signing_algo=b") as resp:
            assert resp.status == 400


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"max_tokens": 1e30}, "max_tokens"), ({"n": 1000}, "n"), ({"n_predict": 400}, "n_predict")],
)
async def test_invalid_output_limits_are_refused(
    start_broker: StartBroker, funded_user: FundedUser, fields: dict[str, Any], param: str
) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = {"Authorization": make_token(user.private_key, broker.provider.address)}
        async with s.post(broker.url + "/v1/proxy/chat/completions", headers=auth, json=CHAT | fields) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == param
        assert await requests_recorded(broker, user.address) == 0
