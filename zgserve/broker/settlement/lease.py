"""Who may settle right now: a lease row in the shared database, with expiry.

Only the holder of the ``settler:<provider>`` lease runs settlement rounds, so
several broker processes on one database (SQLite or PostgreSQL) never build
settlements for the same user at once, and never race on the provider wallet's
transaction nonce. The lease is taken with one conditional ``UPDATE`` (or an
``INSERT`` for the very first holder), which both databases execute atomically;
it is renewed every round and expires ``ttl`` seconds after the last renewal,
so a killed process is replaced within ``ttl``.

The epoch is a fencing token: it grows by one whenever the lease changes hands,
and every journal write and every broadcast of the settlement engine runs
:meth:`Lease.fence` first, in the same database transaction. The fence is a
conditional ``UPDATE`` of the lease row (this holder, this epoch); when it
matches nothing, :class:`LeaseLost` is raised, the transaction rolls back and
nothing is written or sent. On PostgreSQL the ``UPDATE`` also locks the row
until commit, so a successor cannot take the lease over between the check and
the write (or the broadcast, see :meth:`Lease.broadcasting`). A holder that
stalls past its expiry and wakes up after a successor took over is therefore
refused; one whose lease merely expired, with nobody taking it, may go on: no
other process writes or sends meanwhile. Beneath the fence the
journal's claim table (a request can be claimed by one live entry only) and the
outcome fence (a batch's outcome is recorded once) still keep every fee settled
exactly once.

Only the lease holder sends transactions with the provider key, so replicas that
share the key never sign the same wallet nonce; a new holder re-reads the
pending nonce from the node (the engine resets the wallet's sequence whenever
the epoch it holds changes).

Clocks: expiry uses each process's wall clock; processes sharing a database are
assumed to agree within a small fraction of ``ttl``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zgserve.broker.settlement.models import LeaseRow

logger = logging.getLogger(__name__)

_LEASE = cast(Table, LeaseRow.__table__)


class LeaseLost(Exception):
    """This process no longer holds the lease with the epoch it was granted: stop writing and sending."""


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
            renewed = (
                await conn.execute(
                    update(_LEASE)
                    .where(_LEASE.c.name == self.name, _LEASE.c.holder == self.holder)
                    .values(expires_at=expires)
                    .returning(_LEASE.c.epoch)
                )
            ).first()
            if renewed is not None:
                # Read back: a renewal after a refused fence must hold the epoch again.
                self.epoch = int(renewed[0])
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

    async def fence(self, conn: AsyncConnection) -> None:
        """Raise :class:`LeaseLost` unless this process still holds the lease with its epoch.

        Run it first in the transaction of the write it guards. It is an ``UPDATE`` that
        changes nothing, so that PostgreSQL locks the lease row until that transaction ends.
        """
        epoch = self.epoch
        if epoch is not None:
            held = await conn.execute(
                update(_LEASE)
                .where(
                    _LEASE.c.name == self.name,
                    _LEASE.c.holder == self.holder,
                    _LEASE.c.epoch == epoch,
                )
                .values(epoch=_LEASE.c.epoch)
            )
            if held.rowcount == 1:
                return
        self.epoch = None
        raise LeaseLost(f"lease {self.name} (epoch {epoch}) is no longer held by {self.holder}")

    @asynccontextmanager
    async def fenced(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that starts with :meth:`fence`."""
        async with self.db.begin() as conn:
            await self.fence(conn)
            yield conn

    @asynccontextmanager
    async def broadcasting(self) -> AsyncIterator[AsyncConnection]:
        """A fenced transaction to broadcast in and then note the broadcast.

        On PostgreSQL the lease row stays locked during the broadcast: no successor takes over
        between the check and the send. SQLite has one write lock for the whole database,
        which must not wait on a network call (the broker records requests meanwhile); its
        users are one process, so the check commits first and the send follows at once.
        """
        if self.db.dialect.name == "postgresql":
            async with self.fenced() as conn:
                yield conn
            return
        async with self.fenced():
            pass
        async with self.db.begin() as conn:
            yield conn

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
