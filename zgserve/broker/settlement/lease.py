"""Who may settle right now: a lease row in the shared database, with expiry.

Only the holder of the ``settler:<provider>`` lease runs settlement rounds, so
several broker processes on one database (SQLite or PostgreSQL) never build
settlements for the same user at once, and never race on the provider wallet's
transaction nonce. The lease is taken with one conditional ``UPDATE`` (or an
``INSERT`` for the very first holder), which both databases execute atomically;
it is renewed every round and expires ``ttl`` seconds after the last renewal,
so a killed process is replaced within ``ttl``.

A lease is only an optimisation of who works: correctness never depends on it.
If a holder stalls past its expiry and wakes up, the journal's claim table (a
request can be claimed by one live entry only) and the outcome fence (a batch's
outcome is recorded once) still keep every fee settled exactly once.

Clocks: expiry uses each process's wall clock; processes sharing a database are
assumed to agree within a small fraction of ``ttl``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.settlement.models import LeaseRow

logger = logging.getLogger(__name__)

_LEASE = cast(Table, LeaseRow.__table__)


def holder_id() -> str:
    """A name for this process that no other process (or restart of this one) shares."""
    return f"{socket.gethostname()[:48]}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """A named, expiring lease held by ``holder`` (see the module doc)."""

    def __init__(
        self,
        db: AsyncEngine,
        name: str,
        *,
        ttl: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.holder = holder or holder_id()
        self._clock = clock
        self.epoch: int | None = None  # set while held

    async def acquire(self) -> bool:
        """Take or renew the lease; True when this process holds it until ``now + ttl``."""
        now = self._clock()
        expires = now + self.ttl
        async with self.db.begin() as conn:
            renewed = await conn.execute(
                update(_LEASE)
                .where(_LEASE.c.name == self.name, _LEASE.c.holder == self.holder)
                .values(expires_at=expires)
            )
            if renewed.rowcount == 1:
                return True
            taken = await conn.execute(
                update(_LEASE)
                .where(_LEASE.c.name == self.name, _LEASE.c.expires_at < now)
                .values(holder=self.holder, expires_at=expires, epoch=_LEASE.c.epoch + 1)
            )
            if taken.rowcount == 1:
                self.epoch = (
                    await conn.execute(select(_LEASE.c.epoch).where(_LEASE.c.name == self.name))
                ).scalar_one()
                logger.info("settlement lease %s taken over by %s", self.name, self.holder)
                return True
        # No row yet: the first process to insert it wins; the others see an IntegrityError.
        try:
            async with self.db.begin() as conn:
                exists = (await conn.execute(select(_LEASE.c.name).where(_LEASE.c.name == self.name))).first()
                if exists is not None:
                    self.epoch = None
                    return False
                await conn.execute(
                    insert(_LEASE).values(name=self.name, holder=self.holder, expires_at=expires, epoch=1)
                )
        except IntegrityError:
            self.epoch = None
            return False
        self.epoch = 1
        logger.info("settlement lease %s taken by %s", self.name, self.holder)
        return True

    async def release(self) -> None:
        """Give the lease up now (on a clean stop), so another process need not wait for expiry."""
        async with self.db.begin() as conn:
            await conn.execute(
                update(_LEASE)
                .where(_LEASE.c.name == self.name, _LEASE.c.holder == self.holder)
                .values(expires_at=0.0)
            )
        self.epoch = None

    async def current_holder(self) -> tuple[str, float] | None:
        """``(holder, expires_at)`` of the lease row, if any."""
        async with self.db.connect() as conn:
            row = (
                await conn.execute(
                    select(_LEASE.c.holder, _LEASE.c.expires_at).where(_LEASE.c.name == self.name)
                )
            ).first()
        return (str(row[0]), float(row[1])) if row else None

    async def drop(self) -> None:
        """Remove the row entirely (tests and operators only)."""
        async with self.db.begin() as conn:
            await conn.execute(delete(_LEASE).where(_LEASE.c.name == self.name))
