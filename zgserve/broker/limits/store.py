"""Where limit counters live: a store interface and the in-process store (the default).

Two primitives cover every limit: a token bucket (requests and tokens per minute, requests
per second per IP) and a set of leased slots (concurrency). The in-process store needs no
network hop; :mod:`zgserve.broker.limits.redis_store` shares the same counters across replicas.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

ALWAYS = float("-inf")  # a bucket ``need`` that always passes: consume after the fact


@dataclass(frozen=True, slots=True)
class BucketState:
    allowed: bool
    tokens: float  # what is left after this call (negative after a large post-consume)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket to check on admission: refill at ``rate``/s up to ``burst``, need, take."""

    key: str
    rate: float
    burst: float
    need: float
    take: float


@dataclass(frozen=True, slots=True)
class Decision:
    """An admission's outcome: the state of each bucket checked, in order (the checks stop at
    the first refusal), and the concurrency key that was full (None: every slot is held)."""

    buckets: list[BucketState]
    full: str | None

    @property
    def admitted(self) -> bool:
        return all(b.allowed for b in self.buckets) and self.full is None


class LimitStore(Protocol):
    async def bucket(self, key: str, rate: float, burst: float, need: float, take: float) -> BucketState:
        """Refill ``key`` at ``rate``/s up to ``burst``; if it holds ``need``, take ``take`` out."""
        ...

    async def acquire(self, slots: list[tuple[str, int]], lease: str) -> str | None:
        """Hold ``lease`` in every ``(key, limit)`` at once, or in none; the full key, or None."""
        ...

    async def admit(self, buckets: list[Bucket], slots: list[tuple[str, int]], lease: str) -> Decision:
        """The buckets in order, then (if all passed) the slots: one step, one round trip."""
        ...

    async def release(self, keys: list[str], lease: str) -> None: ...

    async def finish(self, bucket: Bucket | None, keys: list[str], lease: str) -> None:
        """A request's end in one step: ``bucket`` charged unconditionally, the slots released."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalStore:
    """Counters of this process only: exact and cheap when there is one replica."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._slots: dict[str, int] = {}

    async def bucket(self, key: str, rate: float, burst: float, need: float, take: float) -> BucketState:
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        allowed = tokens >= need
        if allowed:
            tokens -= take
        if tokens >= burst:
            self._buckets.pop(key, None)  # full again: forget it, so idle users cost no memory
        else:
            self._buckets[key] = (tokens, now)
        return BucketState(allowed, tokens)

    async def acquire(self, slots: list[tuple[str, int]], lease: str) -> str | None:
        for key, limit in slots:
            if self._slots.get(key, 0) >= limit:
                return key
        for key, _ in slots:
            self._slots[key] = self._slots.get(key, 0) + 1
        return None

    async def admit(self, buckets: list[Bucket], slots: list[tuple[str, int]], lease: str) -> Decision:
        states: list[BucketState] = []
        for b in buckets:
            states.append(await self.bucket(b.key, b.rate, b.burst, b.need, b.take))
            if not states[-1].allowed:
                return Decision(states, None)
        return Decision(states, await self.acquire(slots, lease) if slots else None)

    async def finish(self, bucket: Bucket | None, keys: list[str], lease: str) -> None:
        if bucket is not None:
            await self.bucket(bucket.key, bucket.rate, bucket.burst, bucket.need, bucket.take)
        await self.release(keys, lease)

    async def release(self, keys: list[str], lease: str) -> None:
        for key in keys:
            left = self._slots.get(key, 0) - 1
            if left > 0:
                self._slots[key] = left
            else:
                self._slots.pop(key, None)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
