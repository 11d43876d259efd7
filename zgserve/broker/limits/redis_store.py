"""Limit counters in Redis, shared by every replica.

Each operation is one Lua script, so a check and its update are atomic across replicas,
and the clock is Redis's own (``TIME``), so replicas' clocks need not agree. A slot is a
member of a sorted set scored by its expiry: this replica renews the leases it holds every
third of ``slot_ttl``; a replica that dies stops renewing, and its slots lapse within
``slot_ttl`` seconds. Any Redis failure raises :class:`LimitsUnavailable` (admission fails
closed: nobody is served past limits that cannot be checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from zgserve.broker.errors import LimitsUnavailable
from zgserve.broker.limits.store import Bucket, BucketState, Decision

logger = logging.getLogger(__name__)

_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local need, take = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tok', 'ts')
local tok = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tok = math.min(burst, tok + (now - ts) * rate)
local ok = 0
if tok >= need then ok = 1; tok = tok - take end
redis.call('HSET', KEYS[1], 'tok', tostring(tok), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tok) / rate * 1000) + 1000)
return {ok, tostring(tok)}
"""
# KEYS: slot sets; ARGV: lease, ttl ms, then one limit per key. All or nothing.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then return i end
end
local ttl = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[1])
  redis.call('PEXPIRE', key, ttl)
end
return 0
"""
# An admission in one round trip: KEYS are the buckets, then the slot sets; ARGV: the number of
# buckets, (rate, burst, need, take) per bucket, the lease, the ttl in ms, a limit per slot set.
# Returns ok, tokens per bucket checked (stopping at a refusal), then the index of the full slot
# set (0: every slot held; -1: not tried, a bucket refused).
_ADMIT = """
local nb = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i = 1, nb do
  local a = 1 + (i - 1) * 4
  local rate, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local need, take = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local v = redis.call('HMGET', KEYS[i], 'tok', 'ts')
  local tok = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  tok = math.min(burst, tok + (now - ts) * rate)
  local ok = 0
  if tok >= need then ok = 1; tok = tok - take end
  redis.call('HSET', KEYS[i], 'tok', tostring(tok), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((burst - tok) / rate * 1000) + 1000)
  out[#out + 1] = ok
  out[#out + 1] = tostring(tok)
  if ok == 0 then
    out[#out + 1] = -1
    return out
  end
end
local lease, ttl = ARGV[nb * 4 + 2], tonumber(ARGV[nb * 4 + 3])
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for j = nb + 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', ms)
  if redis.call('ZCARD', KEYS[j]) >= tonumber(ARGV[nb * 4 + 3 + j - nb]) then
    out[#out + 1] = j - nb
    return out
  end
end
for j = nb + 1, #KEYS do
  redis.call('ZADD', KEYS[j], ms + ttl, lease)
  redis.call('PEXPIRE', KEYS[j], ttl)
end
out[#out + 1] = 0
return out
"""
# A request's end in one round trip: KEYS are the bucket (when ARGV[1] is 1), then the slot
# sets; ARGV: 1/0, rate, burst, take, the lease. The bucket is charged whatever it holds.
_FINISH = """
local nb = tonumber(ARGV[1])
if nb == 1 then
  local rate, burst, take = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local v = redis.call('HMGET', KEYS[1], 'tok', 'ts')
  local tok = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  tok = math.min(burst, tok + (now - ts) * rate) - take
  redis.call('HSET', KEYS[1], 'tok', tostring(tok), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tok) / rate * 1000) + 1000)
end
for j = nb + 1, #KEYS do
  redis.call('ZREM', KEYS[j], ARGV[5])
end
return 0
"""
# KEYS: slot sets; ARGV: ttl ms, then the lease held in each key (renewed only if still there).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return 0
"""


class RedisStore:
    """The :class:`~zgserve.broker.limits.store.LimitStore` of several replicas."""

    def __init__(self, url: str, *, slot_ttl: float, prefix: str) -> None:
        # Short timeouts: a stalled Redis must turn into a quick 503, not a hung request.
        # Retries on a broken connection: after a Redis restart every pooled connection is dead,
        # and without them each would fail one request. Repeating a script is safe: a slot is a
        # set member under its lease (added twice, held once), and a bucket taken twice only
        # errs on the strict side.
        self._client: Any = aioredis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
            retry_on_error=[RedisConnectionError],  # not timeouts: a stall stays a quick 503
        )
        self._ttl_ms = int(slot_ttl * 1000)
        self._prefix = prefix
        self._bucket = self._client.register_script(_BUCKET)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._admit = self._client.register_script(_ADMIT)
        self._finish = self._client.register_script(_FINISH)
        self._held: dict[str, list[str]] = {}  # lease -> its keys, renewed until released
        self._renewer: asyncio.Task[None] | None = None

    async def bucket(self, key: str, rate: float, burst: float, need: float, take: float) -> BucketState:
        need_arg = "-1e300" if need == float("-inf") else repr(need)
        try:
            ok, tokens = await self._bucket(
                keys=[self._prefix + key], args=[repr(rate), repr(burst), need_arg, repr(take)]
            )
        except RedisError as exc:
            raise _unavailable(exc) from None
        return BucketState(bool(ok), float(tokens))

    async def acquire(self, slots: list[tuple[str, int]], lease: str) -> str | None:
        keys = [self._prefix + key for key, _ in slots]
        try:
            full = int(await self._acquire(keys=keys, args=[lease, self._ttl_ms, *(n for _, n in slots)]))
        except RedisError as exc:
            raise _unavailable(exc) from None
        if full:
            return slots[full - 1][0]
        self._held[lease] = keys
        return None

    async def admit(self, buckets: list[Bucket], slots: list[tuple[str, int]], lease: str) -> Decision:
        keys = [self._prefix + b.key for b in buckets] + [self._prefix + key for key, _ in slots]
        args: list[Any] = [len(buckets)]
        for b in buckets:
            need = "-1e300" if b.need == float("-inf") else repr(b.need)
            args += [repr(b.rate), repr(b.burst), need, repr(b.take)]
        args += [lease, self._ttl_ms, *(n for _, n in slots)]
        try:
            out = await self._admit(keys=keys, args=args)
        except RedisError as exc:
            raise _unavailable(exc) from None
        states = [BucketState(bool(out[i]), float(out[i + 1])) for i in range(0, len(out) - 1, 2)]
        full = int(out[-1])
        if full > 0:
            return Decision(states, slots[full - 1][0])
        if full == 0 and slots:
            self._held[lease] = keys[len(buckets) :]
        return Decision(states, None)

    async def finish(self, bucket: Bucket | None, keys: list[str], lease: str) -> None:
        held = self._held.pop(lease, None) or []
        if bucket is None and not held:
            return
        bucket_keys = [] if bucket is None else [self._prefix + bucket.key]
        args: list[Any] = [0, 0, 0, 0, lease]
        if bucket is not None:
            args = [1, repr(bucket.rate), repr(bucket.burst), repr(bucket.take), lease]
        try:
            await self._finish(keys=bucket_keys + held, args=args)
        except RedisError as exc:
            # The answer is out: its slots lapse within the lease time; its tokens go uncounted.
            logger.warning("cannot end a request's limits (%s); its slots lapse", type(exc).__name__)

    async def release(self, keys: list[str], lease: str) -> None:
        held = self._held.pop(lease, None)
        if not held:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in held:
                    pipe.zrem(key, lease)
                await pipe.execute()
        except RedisError as exc:
            # The slot lapses on its own within the lease time.
            logger.warning("cannot release a concurrency slot (%s); it expires by itself", type(exc).__name__)

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop(), name="limits-renew")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._client.aclose()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            keys: list[str] = []
            leases: list[str] = []
            for lease, held in list(self._held.items()):
                keys += held
                leases += [lease] * len(held)
            if not keys:
                continue
            try:
                await self._renew(keys=keys, args=[self._ttl_ms, *leases])
            except RedisError as exc:
                logger.warning("cannot renew concurrency slots: %s", type(exc).__name__)


def _unavailable(exc: Exception) -> LimitsUnavailable:
    logger.error("limits store unreachable: %s", type(exc).__name__)
    return LimitsUnavailable("the broker's limits store is unavailable")
