"""Chain reads of users' sub-accounts, cached briefly.

A cached account is reused for ``ttl`` seconds, so a revocation, a bumped
generation or a refund takes effect within that window. Callers that would
reject a request on cached state ask again with ``fresh=True`` (refresh on
failure), so a user who has just topped up or acknowledged is not refused
because of an old read. Concurrent misses for one user share one RPC call.
If the RPC fails, an entry younger than ``max_stale`` is served; otherwise
:class:`ChainUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from zgserve.broker.errors import ChainUnavailable
from zgserve.chain.types import Account

logger = logging.getLogger(__name__)

AccountFetch = Callable[[str], Awaitable[Account | None]]
"""Reads ``getAccount(user, provider)``; ``None`` when the account does not exist."""


@dataclass(frozen=True, slots=True)
class CachedAccount:
    account: Account | None
    fetched_at: float

    @property
    def exists(self) -> bool:
        return self.account is not None


class AccountCache:
    """Per-user cache of ``getAccount`` results with single-flight refreshes."""

    def __init__(
        self,
        fetch: AccountFetch,
        *,
        ttl: float = 3.0,
        max_stale: float = 30.0,
        min_refresh: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._max_stale = max_stale
        self._min_refresh = min_refresh
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, CachedAccount] = {}
        self._inflight: dict[str, asyncio.Future[CachedAccount]] = {}

    async def get(self, user: str, *, fresh: bool = False) -> CachedAccount:
        """The account of ``user`` (lower-case address), from cache when recent enough.

        ``fresh`` forces a new read unless the cached one is younger than ``min_refresh``
        (which keeps a client retrying a refused token from turning into an RPC flood).
        """
        entry = self._entries.get(user)
        if entry is not None:
            age = self._clock() - entry.fetched_at
            if age < (self._min_refresh if fresh else self._ttl):
                return entry
        pending = self._inflight.get(user)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CachedAccount] = asyncio.get_running_loop().create_future()
        self._inflight[user] = future
        try:
            result = await self._load(user, entry)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) get it through shield
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[user]

    async def _load(self, user: str, previous: CachedAccount | None) -> CachedAccount:
        try:
            account = await self._fetch(user)
        except Exception as exc:
            if previous is not None and self._clock() - previous.fetched_at <= self._max_stale:
                logger.warning(
                    "account read failed for %s, serving cached state: %s", user, type(exc).__name__
                )
                return previous
            raise ChainUnavailable(f"cannot read the account from the chain: {type(exc).__name__}") from exc
        entry = CachedAccount(account, self._clock())
        if len(self._entries) >= self._max_entries and user not in self._entries:
            self._entries.pop(next(iter(self._entries)))  # drop the oldest insertion
        self._entries[user] = entry
        return entry

    def invalidate(self, user: str | None = None) -> None:
        """Forget one user's cached account (or all), e.g. after a settlement changed it."""
        if user is None:
            self._entries.clear()
        else:
            self._entries.pop(user.lower(), None)
