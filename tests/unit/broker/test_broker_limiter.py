"""The limiter's one-step admission, on the in-process store and on Redis (127.0.0.1:6379, a
private key prefix): the same decisions from both, and a refusal takes no slot."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from zgserve.broker.errors import RateLimited
from zgserve.broker.limits import Limiter, LocalStore
from zgserve.broker.limits.redis_store import RedisStore
from zgserve.broker.settings import LimitsSettings

REDIS = "redis://127.0.0.1:6379/0"
WHITE = "0x" + "Ab" * 20


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    limiters: list[Limiter] = []

    async def build(**values: Any) -> Limiter:
        settings = LimitsSettings.model_validate(values)
        if request.param == "local":
            store: Any = LocalStore()
        else:
            store = RedisStore(REDIS, slot_ttl=30, prefix=f"zgserve:test:{uuid.uuid4().hex}:")
        limiter = Limiter(settings, store)
        await limiter.start()
        limiters.append(limiter)
        return limiter

    yield build
    for limiter in limiters:
        await limiter.close()


async def test_rate_then_concurrency_in_one_step(make: Any) -> None:
    limiter = await make(perUserRPM=60, perUserBurst=3, maxPerUserConcurrent=2, maxGlobalConcurrent=0)
    first = await limiter.admit("0xa")
    names = dict(first.headers)
    assert names[b"x-ratelimit-limit-requests"] == b"60"
    assert names[b"x-ratelimit-remaining-requests"] == b"2"
    second = await limiter.admit("0xa")
    with pytest.raises(RateLimited, match="in flight for this user") as full:
        await limiter.admit("0xa")  # the bucket had one left: taken; both slots are held
    assert (b"retry-after", b"1") in full.value.headers
    await first.release()
    with pytest.raises(RateLimited, match=r"rate limit exceeded: wait 1 s \(limit: 60 requests/min\)"):
        await limiter.admit("0xa")  # a slot is free now, but the bucket is empty
    await second.release()
    other = await limiter.admit("0xb")  # per user: another user is not affected
    await other.release()


async def test_a_refused_rate_takes_no_slot(make: Any) -> None:
    limiter = await make(perUserRPM=60, perUserBurst=1, maxPerUserConcurrent=0, maxGlobalConcurrent=1)
    held = await limiter.admit("0xa")
    with pytest.raises(RateLimited, match="rate limit"):
        await limiter.admit("0xa")  # refused by its bucket before the (full) global slot
    with pytest.raises(RateLimited, match="in flight in all"):
        await limiter.admit("0xb")  # its bucket is taken all the same (the official order)
    await held.release()
    admitted = await limiter.admit("0xc")  # the refusals above left the global slot free
    await admitted.release()


async def test_tokens_per_minute_and_whitelist(make: Any) -> None:
    limiter = await make(
        perUserRPM=0, perUserTPM=600, perUserTPMBurst=100, maxPerUserConcurrent=1, whitelist=[WHITE]
    )
    first = await limiter.admit("0xa")
    await limiter.end(first, "0xa", 250)  # one large answer drives the bucket negative
    second = await limiter.admit("0xb")  # ... and its slot is back: the one per user is free
    await limiter.consume_tokens("0xb", 1)
    await second.release()
    with pytest.raises(RateLimited, match=r"token rate limit exceeded: wait 16 s \(limit: 600 tokens/min\)"):
        await limiter.admit("0xa")
    again = await limiter.admit("0xb")
    await limiter.end(again, "0xb", 0)
    await limiter.end(again, "0xb", 0)  # twice: nothing more happens
    # Whitelisted: no per-user limits at all, not even the per-user slot.
    held = [await limiter.admit(WHITE.lower()) for _ in range(3)]
    assert all(h.headers == [] for h in held)
    for h in held:
        await h.release()


async def test_no_limits_no_store_call(make: Any) -> None:
    limiter = await make(perUserRPM=0, maxPerUserConcurrent=0, maxGlobalConcurrent=0)
    admission = await limiter.admit("0xa")
    assert admission.headers == []
    await admission.release()


async def test_images_per_minute(make: Any) -> None:
    limiter = await make(perUserRPM=0, maxPerUserConcurrent=0, perUserImagesPerMinute=6, whitelist=[WHITE])
    assert limiter.model_limits() == {"images_per_minute": 6}
    headers = dict(await limiter.take_images("0xa", 4))
    assert headers[b"x-ratelimit-limit-images"] == b"6"
    assert headers[b"x-ratelimit-remaining-images"] == b"2"
    with pytest.raises(RateLimited, match=r"image rate limit exceeded: wait 20 s \(limit: 6 images/min\)"):
        await limiter.take_images("0xa", 4)  # 2 left, 4 asked: 2 more at one every 10 s
    assert dict(await limiter.take_images("0xb", 6))[b"x-ratelimit-remaining-images"] == b"0"
    assert await limiter.take_images(WHITE.lower(), 100) == []  # monitoring is never limited
