"""Limits on the devnet, with the in-process store and with Redis: 429 with the rate-limit headers,
per user and per IP, tokens per minute, the whitelist, fail-closed Redis, and stalled readers."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import aiohttp
import pytest

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from zgserve.broker.db import repo
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet

REDIS = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.parametrize("store", ["local", "redis"])


def limits(store: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"maxGlobalConcurrent": 0, "maxPerUserConcurrent": 0, "perUserRPM": 0}
    if store == "redis":
        base["redisUrl"] = REDIS
    return base | values


async def chat(
    s: aiohttp.ClientSession, url: str, auth: str, *, fake: dict[str, Any] | None = None, stream: bool = False
) -> tuple[int, dict[str, str], bytes]:
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 16,
        "stream": stream,
        "fake": fake or {"chunks": 4},
    }
    async with s.post(url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}) as r:
        return r.status, dict(r.headers), await r.read()


async def test_per_user_concurrency_refuses_with_headers_while_others_are_served(
    store: str, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    cfg = limits(store, maxPerUserConcurrent=2, maxGlobalConcurrent=10, perUserRPM=6000, perUserBurst=100)
    async with start_broker(limits=cfg) as broker:
        a = make_token((await funded_user(broker.provider.address)).private_key, broker.provider.address)
        b = make_token((await funded_user(broker.provider.address)).private_key, broker.provider.address)
        async with aiohttp.ClientSession() as s:
            slow = [asyncio.create_task(chat(s, broker.url, a, fake={"delay_ms": 1500})) for _ in range(2)]
            await asyncio.sleep(0.7)
            status, headers, body = await chat(s, broker.url, a)
            assert status == 429, body
            assert json.loads(body)["error"]["code"] == "rate_limited"
            assert headers["Retry-After"] == "1"
            assert headers["x-ratelimit-limit-requests"] == "6000"
            assert int(headers["x-ratelimit-remaining-requests"]) >= 90
            assert headers["x-ratelimit-reset-requests"].endswith("s")
            other = await chat(s, broker.url, b)
            assert other[0] == 200
            assert other[1]["x-ratelimit-limit-requests"] == "6000"
            assert [r[0] for r in await asyncio.gather(*slow)] == [200, 200]
            # The slots came back when the answers ended.
            assert (await chat(s, broker.url, a))[0] == 200


async def test_requests_per_minute_per_user_and_per_ip(
    store: str, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with start_broker(limits=limits(store, perUserRPM=60, perUserBurst=2)) as broker:
        token = make_token((await funded_user(broker.provider.address)).private_key, broker.provider.address)
        async with aiohttp.ClientSession() as s:
            first, second, third = [await chat(s, broker.url, token) for _ in range(3)]
        assert (first[0], second[0], third[0]) == (200, 200, 429)
        assert first[1]["x-ratelimit-remaining-requests"] == "1"
        assert third[1]["x-ratelimit-remaining-requests"] == "0"
        assert third[1]["Retry-After"] == "1"
        async with broker.core.db.connect() as conn:
            assert (await repo.list_requests(conn, limit=10)).total == 2  # the refused one reserved nothing

    async with start_broker(limits=limits(store, perIpProxyRps=1, perIpOtherRps=1)) as broker:
        async with aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(2):
                async with s.get(broker.url + "/v1/models") as r:
                    statuses.append(r.status)
            async with s.post(broker.url + "/v1/proxy/chat/completions", json={}) as r:
                statuses.append(r.status)  # its own bucket: refused later, by authentication
            async with s.post(broker.url + "/v1/proxy/chat/completions", json={}) as r:
                statuses.append(r.status)
                assert r.headers["Retry-After"] == "1"
        assert statuses == [200, 429, 401, 429]


async def test_tokens_per_minute_and_models_listing(
    store: str, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    cfg = limits(store, perUserRPM=600, perUserBurst=50, perUserTPM=60, perUserTPMBurst=20)
    async with start_broker(limits=cfg) as broker:
        token = make_token((await funded_user(broker.provider.address)).private_key, broker.provider.address)
        async with aiohttp.ClientSession() as s:
            async with s.get(broker.url + "/v1/models") as r:
                [model] = (await r.json())["data"]
            assert model["rate_limits"] == {"requests_per_minute": 600, "tokens_per_minute": 60}
            first = await chat(s, broker.url, token, fake={"chunks": 30})  # over 20 tokens in one answer
            second = await chat(s, broker.url, token)
        assert first[0] == 200
        assert first[1]["x-ratelimit-remaining-tokens"] == "20"
        assert second[0] == 429
        assert second[1]["x-ratelimit-limit-tokens"] == "60"
        assert second[1]["x-ratelimit-remaining-tokens"] == "0"
        assert int(second[1]["Retry-After"]) >= 10  # 30+ tokens below zero at one token a second


async def test_whitelisted_address_is_neither_limited_nor_billed(
    store: str, start_broker: StartBroker, devnet: Devnet
) -> None:
    monitor = await devnet.new_account()
    cfg = limits(store, perUserRPM=60, perUserBurst=1, maxPerUserConcurrent=1, whitelist=[monitor.address])
    async with start_broker(limits=cfg) as broker:
        # An account with the provider, but no balance to reserve: nothing is ever reserved.
        ledger = devnet.chain.ledger(devnet.chain.wallet(monitor.private_key))
        await ledger.add_ledger(3 * OG)
        await ledger.transfer_fund(broker.provider.address, OG)
        token = make_token(monitor.private_key, broker.provider.address)
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(chat(s, broker.url, token, stream=i % 2 == 0) for i in range(4)))
        assert [r[0] for r in results] == [200] * 4
        assert "x-ratelimit-limit-requests" not in results[0][1]
        async with broker.core.db.connect() as conn:
            assert (await repo.list_requests(conn, limit=10)).total == 0
        assert broker.core.metrics.charged.labels("whitelisted")._value.get() == 4


async def test_unreachable_redis_fails_closed(
    store: str, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    if store == "local":
        pytest.skip("Redis only")
    async with start_broker(
        limits=limits(store, maxPerUserConcurrent=5, redisUrl="redis://127.0.0.1:1/0")
    ) as b:
        token = make_token((await funded_user(b.provider.address)).private_key, b.provider.address)
        async with aiohttp.ClientSession() as s:
            status, _, body = await chat(s, b.url, token)
        assert status == 503
        assert json.loads(body)["error"]["code"] == "limits_unavailable"
        async with b.core.db.connect() as conn:
            assert (await repo.list_requests(conn, limit=10)).total == 0


async def test_stalled_reader_is_cut_and_billed_what_it_received(
    store: str, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    cfg = limits(store, maxPerUserConcurrent=1, idleSeconds=1)
    async with start_broker(limits=cfg, billing={"maxOutputTokens": 40000}) as broker:
        token = make_token((await funded_user(broker.provider.address)).private_key, broker.provider.address)
        body = json.dumps(
            {
                "model": "fake-model",
                "messages": [{"role": "user", "content": "long"}],
                "max_tokens": 40000,
                "stream": True,
                "fake": {"chunks": 30000},  # megabytes of events: more than any socket buffers
            }
        ).encode()
        host, port = broker.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel cannot buffer for us
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        head = (
            f"POST /v1/proxy/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        await loop.sock_sendall(sock, head + body)
        await asyncio.sleep(4)  # reads nothing: the broker's sends block, then it gives up
        received = bytearray()
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 3):
                received += chunk
        except TimeoutError:
            pass
        sock.close()
        text = _dechunk(bytes(received)).decode(errors="replace")
        assert "[DONE]" not in text
        # A content value whose text began to arrive counts (the broker bills a half-sent event).
        events = re.findall(r'"content": ?"w', text)
        async with broker.core.db.connect() as conn:
            page = await repo.list_requests(conn, limit=10)
        [record] = page.items
        assert record.status == "disconnected"
        assert 0 < record.output_tokens == len(events) < 30000
        # The slot came back: the one allowed in flight serves the next request.
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, broker.url, token))[0] == 200


def _dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response, as far as it arrived."""
    rest = raw.split(b"\r\n\r\n", 1)[1]
    out = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep or not size_line:
            break
        size = int(size_line, 16)
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)
