"""Rate and concurrency limits, checked after authentication and before reservation.

As the official broker: per user, requests per minute (a token bucket of ``perUserBurst``)
and tokens per minute (checked on entry, consumed once the answer is known, so one large
answer can drive the bucket negative); concurrency in all and per user; per IP, requests
per second. Whitelisted addresses skip the per-user limits and billing but still count
towards the global concurrency, which protects the GPU. Refusals are 429 with
``Retry-After`` and the OpenAI ``x-ratelimit-*`` headers; answers carry the same headers.
"""

from __future__ import annotations

import math
import uuid

from zgserve.broker.errors import RateLimited
from zgserve.broker.limits.store import ALWAYS, Bucket, LimitStore, LocalStore
from zgserve.broker.settings import LimitsSettings

__all__ = ["Admission", "Limiter", "LocalStore", "limiter_from_settings"]

Headers = list[tuple[bytes, bytes]]


def limiter_from_settings(settings: LimitsSettings, provider: str) -> Limiter:
    if settings.redis_url:
        from zgserve.broker.limits.redis_store import RedisStore

        # One provider's replicas share counters; other providers on the same Redis do not.
        store = RedisStore(
            settings.redis_url, slot_ttl=settings.slot_ttl_seconds, prefix=f"zgserve:limits:{provider}:"
        )
        return Limiter(settings, store)
    return Limiter(settings, LocalStore())


class Admission:
    """A request let in: its rate-limit headers, and the concurrency slot it holds until released."""

    __slots__ = ("_keys", "_lease", "_store", "headers")

    def __init__(self, store: LimitStore, keys: list[str], lease: str, headers: Headers) -> None:
        self._store, self._keys, self._lease, self.headers = store, keys, lease, headers

    async def release(self) -> None:
        keys, self._keys = self._keys, []
        if keys:
            await self._store.release(keys, self._lease)


class Limiter:
    def __init__(self, settings: LimitsSettings, store: LimitStore) -> None:
        s = settings
        self.settings = s
        self.store = store
        self.whitelist = frozenset(a.lower() for a in s.whitelist)
        self._rpm, self._rpm_burst = s.per_user_rpm, max(1, s.per_user_burst)
        # The official default TPM burst: a sixth of a minute's tokens.
        self._tpm, self._tpm_burst = s.per_user_tpm, s.per_user_tpm_burst or max(1, s.per_user_tpm // 6)
        self._ipm = s.per_user_images_per_minute

    def whitelisted(self, user: str) -> bool:
        return user in self.whitelist

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    async def check_ip(self, ip: str, proxy: bool) -> None:
        """Requests per second from one client address; refused before any other work."""
        rate = self.settings.per_ip_proxy_rps if proxy else self.settings.per_ip_other_rps
        if rate <= 0:
            return
        state = await self.store.bucket(f"ip:{'p' if proxy else 'o'}:{ip}", rate, max(1.0, rate), 1, 1)
        if not state.allowed:
            raise RateLimited(
                f"too many requests from this address (limit: {rate:g} requests/s)",
                headers=[(b"retry-after", b"1")],
            )

    async def admit(self, user: str) -> Admission:
        """Per-user rates, then the concurrency slots (the costly check last, as officially), in
        one step of the store (one round trip to Redis)."""
        free = user in self.whitelist
        checks: list[tuple[Bucket, bytes, int]] = []
        if self._rpm and not free:
            rpm = Bucket(f"rpm:{user}", self._rpm / 60, self._rpm_burst, 1, 1)
            checks.append((rpm, b"requests", self._rpm))
        if self._tpm and not free:
            # Entry needs a positive bucket only: the answer's size is unknown until it ends.
            tpm = Bucket(f"tpm:{user}", self._tpm / 60, self._tpm_burst, 1, 0)
            checks.append((tpm, b"tokens", self._tpm))
        s = self.settings
        slots: list[tuple[str, int]] = []
        if s.max_global_concurrent:
            slots.append(("conc:all", s.max_global_concurrent))
        if s.max_per_user_concurrent and not free:
            slots.append((f"conc:u:{user}", s.max_per_user_concurrent))
        if not checks and not slots:
            return Admission(self.store, [], "", [])
        lease = uuid.uuid4().hex if slots else ""
        decision = await self.store.admit([c[0] for c in checks], slots, lease)
        headers: Headers = []
        for (bucket, kind, limit), state in zip(checks, decision.buckets, strict=False):
            headers += _trio(kind, limit, state.tokens, bucket.burst, bucket.rate)
            if not state.allowed:
                wait = math.ceil((1 - state.tokens) / bucket.rate)
                what = "rate limit" if kind == b"requests" else "token rate limit"
                raise RateLimited(
                    f"{what} exceeded: wait {wait} s (limit: {limit} {kind.decode()}/min)",
                    headers=[(b"retry-after", str(wait).encode()), *headers],
                )
        if decision.full is not None:
            which = "in all" if decision.full == "conc:all" else "for this user"
            raise RateLimited(
                f"too many requests in flight {which}; retry when one ends",
                headers=[(b"retry-after", b"1"), *headers],
            )
        return Admission(self.store, [k for k, _ in slots], lease, headers)

    async def end(self, admission: Admission, user: str, tokens: int) -> None:
        """A request is over: its slots back and its tokens counted, in one step of the store.

        Never raises: the answer is out already; slots not released lapse by their lease time.
        """
        bucket = None
        if self._tpm and tokens > 0 and user not in self.whitelist:
            bucket = Bucket(f"tpm:{user}", self._tpm / 60, self._tpm_burst, ALWAYS, tokens)
        keys, admission._keys = admission._keys, []
        await self.store.finish(bucket, keys, admission._lease)

    async def consume_tokens(self, user: str, tokens: int) -> None:
        """The answer's tokens, taken after the fact (the bucket may go negative)."""
        if self._tpm and tokens > 0 and user not in self.whitelist:
            await self.store.bucket(f"tpm:{user}", self._tpm / 60, self._tpm_burst, ALWAYS, tokens)

    async def take_images(self, user: str, count: int) -> Headers:
        """The images a request asks for, against the user's images per minute (a bucket of a
        minute's worth, refilled evenly): the ``x-ratelimit-*-images`` headers, or 429."""
        if not self._ipm or count <= 0 or user in self.whitelist:
            return []
        rate = self._ipm / 60
        state = await self.store.bucket(f"ipm:{user}", rate, self._ipm, count, count)
        headers = _trio(b"images", self._ipm, state.tokens, self._ipm, rate)
        if not state.allowed:
            wait = math.ceil((count - state.tokens) / rate)
            raise RateLimited(
                f"image rate limit exceeded: wait {wait} s (limit: {self._ipm} images/min)",
                headers=[(b"retry-after", str(wait).encode()), *headers],
            )
        return headers

    def model_limits(self) -> dict[str, int]:
        """``rate_limits`` of ``/v1/models``, as the official broker shows them (empty: none)."""
        out: dict[str, int] = {}
        if self._rpm:
            out["requests_per_minute"] = self._rpm
        if self._tpm:
            out["tokens_per_minute"] = self._tpm
        if self._ipm:
            out["images_per_minute"] = self._ipm
        return out


def _trio(kind: bytes, limit: int, tokens: float, burst: float, rate: float) -> Headers:
    reset = max(0.0, burst - tokens) / rate
    return [
        (b"x-ratelimit-limit-" + kind, str(limit).encode()),
        (b"x-ratelimit-remaining-" + kind, str(max(0, math.floor(tokens))).encode()),
        (b"x-ratelimit-reset-" + kind, f"{reset:.3f}".rstrip("0").rstrip(".").encode() + b"s"),
    ]
