"""Redis, the limits' shared store, killed and restarted under load: requests in flight finish and
are billed, new ones are refused with 503 ``limits_unavailable`` while it is gone (fail closed),
and the broker serves and limits again once it is back, without a restart of its own."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import redis.asyncio as aioredis

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from tests.integration.broker.test_broker_limits import chat
from tests.redis_instance import private_redis
from zgserve.broker.db import repo


async def _served_again(s: aiohttp.ClientSession, url: str, token: str) -> int:
    deadline = time.monotonic() + 15
    while True:
        status, _, body = await chat(s, url, token)
        if status == 200:
            return status
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "limits_unavailable", body
        assert time.monotonic() < deadline, "not served again within 15 s of Redis coming back"
        await asyncio.sleep(0.2)


async def _slots_held(redis_url: str, count: int) -> None:
    """Wait until ``count`` per-user concurrency slots are held in Redis: the requests were
    admitted (a loaded machine may take a while to get there)."""
    client = aioredis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 15
        while True:
            keys = [k async for k in client.scan_iter(match="*conc:u:*")]
            held = sum([await client.zcard(k) for k in keys])
            if held >= count:
                return
            assert time.monotonic() < deadline, f"only {held} of {count} slots held"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_redis_killed_and_restarted_under_load(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with private_redis() as redis:
        cfg = {
            "maxGlobalConcurrent": 0,
            "maxPerUserConcurrent": 2,
            "perUserRPM": 6000,
            "perUserBurst": 100,
            "redisUrl": redis.url,
        }
        async with start_broker(limits=cfg) as broker, aiohttp.ClientSession() as s:
            token = make_token(
                (await funded_user(broker.provider.address)).private_key, broker.provider.address
            )
            slow = {"chunks": 20, "chunk_delay_ms": 150}  # 3 s: still under way when Redis dies
            in_flight = [
                asyncio.create_task(chat(s, broker.url, token, fake=slow, stream=True)) for _ in range(2)
            ]
            await _slots_held(redis.url, 2)
            await redis.kill()

            status, _, body = await chat(s, broker.url, token)
            assert status == 503, body
            assert json.loads(body)["error"]["code"] == "limits_unavailable"
            # The answers under way when Redis went finish, billed (their slots cannot be returned).
            assert [r[0] for r in await asyncio.gather(*in_flight)] == [200, 200]
            async with broker.core.db.connect() as conn:
                assert (await repo.list_requests(conn, limit=10)).total == 2

            await redis.start()  # empty: every counter and slot of before is gone
            assert await _served_again(s, broker.url, token) == 200
            # And limited again: two slow answers hold both slots, a third is refused.
            held = [
                asyncio.create_task(chat(s, broker.url, token, fake={"delay_ms": 3000})) for _ in range(2)
            ]
            await _slots_held(redis.url, 2)
            status, headers, body = await chat(s, broker.url, token)
            assert status == 429, (body, [r[0] for r in await asyncio.gather(*held)])
            assert headers["Retry-After"]
            assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
            async with broker.core.db.connect() as conn:
                assert (await repo.list_requests(conn, limit=10)).total == 5
