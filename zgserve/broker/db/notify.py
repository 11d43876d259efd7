"""Telling every broker replica on one PostgreSQL database that users were settled.

Each broker process caches what a user's account holds (chain) and owes (database).
When any process settles, every other one must drop those entries, or it would
admit against the pre-settlement balance while already seeing the smaller unsettled
total. The settler calls :func:`publish` in the transaction that records the outcome:
PostgreSQL delivers a ``NOTIFY`` only when that transaction commits, so a replica is
never told before the new state is readable. Every broker runs one
:class:`SettledListener` on a dedicated connection (``LISTEN``); it hands the users
to ``BrokerCore.on_settled``.

A dropped connection is reopened with a bounded backoff; whatever was notified while
it was down is lost, so every (re)connection invalidates all users once.

SQLite is one process by design: its settler invalidates its own caches directly and
none of this runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

logger = logging.getLogger(__name__)

CHANNEL = "zgserve_settled"
# PostgreSQL refuses payloads of 8000 bytes or more; 100 addresses with commas stay far below.
_USERS_PER_NOTICE = 100

OnSettledUsers = Callable[[list[str] | None], None]
"""Told the settled users (lower-case), or None: anything may have changed."""


async def publish(conn: AsyncConnection, users: Sequence[str]) -> None:
    """Notify every listening replica, on commit of ``conn``'s transaction, that ``users`` settled."""
    if conn.dialect.name != "postgresql" or not users:
        return
    names = sorted({u.lower() for u in users})
    for i in range(0, len(names), _USERS_PER_NOTICE):
        payload = ",".join(names[i : i + _USERS_PER_NOTICE])
        await conn.execute(select(func.pg_notify(CHANNEL, payload)))


def _parse(payload: str) -> list[str]:
    return [u for u in payload.split(",") if u]


class SettledListener:
    """``LISTEN`` on :data:`CHANNEL` over its own asyncpg connection, reconnecting when it drops."""

    def __init__(
        self,
        url: str,
        on_settled: OnSettledUsers,
        *,
        connect_timeout_s: float = 5.0,
        retry_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        # asyncpg wants a plain postgresql:// DSN, not SQLAlchemy's driver-qualified URL.
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_settled = on_settled
        self._connect_timeout_s = connect_timeout_s
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while LISTEN is in place

    async def start(self, *, wait_s: float = 5.0) -> None:
        """Start listening; waits up to ``wait_s`` for the first ``LISTEN`` (it keeps trying after)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="settled-listener")
        try:
            await asyncio.wait_for(self.listening.wait(), wait_s)
        except TimeoutError:
            logger.warning("not yet listening for settlements of other replicas; retrying")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _deliver(self, users: list[str] | None) -> None:
        try:
            self._on_settled(users)
        except Exception:  # a cache bug must not end the listener
            logger.exception("invalidating caches after a settlement failed")

    async def _run(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        delay = self._retry_s
        while True:
            try:
                await self._session(asyncpg)
                delay = self._retry_s  # it was up: the next outage starts from a short wait again
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                logger.warning("settlement notices: connection lost (%s); reconnecting", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _session(self, asyncpg: Any) -> None:
        """One connection: LISTEN until it drops."""
        lost = asyncio.Event()
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._notice)
            self.listening.set()
            # Notices sent while we were not listening are gone: forget everything once.
            self._deliver(None)
            await self._watch(conn, lost)
        finally:
            self.listening.clear()
            conn.terminate()

    def _notice(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._deliver(_parse(payload))

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when the connection is gone; an idle one is probed, since a dead peer may stay silent."""
        while not lost.is_set() and not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), 5.0)
            if not lost.is_set():
                await conn.execute("SELECT 1", timeout=self._connect_timeout_s)
