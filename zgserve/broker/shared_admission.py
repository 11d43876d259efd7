"""Exact admission across broker replicas on one PostgreSQL database.

The in-process :class:`~zgserve.broker.billing.BalanceGuard` is exact within one
process; replicas on one database need the same decision made on shared state:

* every admission is one statement (``zg_admit``, created by the migration) that
  takes a per-user advisory lock, checks and holds in one transaction, so two
  replicas never decide on the same headroom at once, in one round trip;
* requests in flight are rows of ``broker_reservations`` (the amount held, the
  replica, an expiry); the replica renews its rows while their requests run, so a
  replica that dies releases its holds within ``ttl`` seconds;
* headroom = on-chain balance − pending refund − unsettled fees − debt check −
  live reservations − ``minLocked``, with the unsettled fees and reservations read
  inside the locked transaction;
* the on-chain balance is a snapshot that this guard keeps per user together with
  the newest settlement nonce recorded when it was read (read *before* the chain):
  when any replica has settled the user since, the snapshot is read again before
  admitting. Without this a replica would subtract the smaller unsettled total after
  a settlement from a balance read before it, and admit the settled amount twice.

A reservation becomes the recorded fee (the record is committed first, then the
hold is dropped: for that instant the fee counts twice, never zero times) or is
dropped when nothing was charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.errors import InsufficientBalance, OutstandingDebt, StorageUnavailable
from zgserve.chain.types import Account
from zgserve.common.money import fmt_og

logger = logging.getLogger(__name__)

AccountFetch = Callable[[str], Awaitable[Account | None]]
# A settlement landing while a snapshot is read: read it again, a few times at most.
ATTEMPTS = 3

_ADMIT = "SELECT status, hold_id, owed FROM zg_admit($1, $2::numeric, $3, $4, $5::numeric, $6::numeric)"
_STATE = text(
    'SELECT (SELECT coalesce(max(settlement_nonce), -1) FROM broker_requests WHERE "user" = :u),'
    ' (SELECT coalesce(sum(fee), 0) FROM broker_requests WHERE "user" = :u AND NOT settled),'
    " (SELECT coalesce(max(debt), 0) FROM broker_users WHERE address = :u),"
    ' (SELECT coalesce(sum(amount), 0) FROM broker_reservations WHERE "user" = :u AND expires_at > :now)'
)
_MARKER = 'SELECT coalesce(max(settlement_nonce), -1) FROM broker_requests WHERE "user" = $1'
_DROP = "SELECT zg_release($1::bigint[])"  # asynchronous commit: see migration 0003
_RENEW = "UPDATE broker_reservations SET expires_at = $1 WHERE holder = $2 AND id = ANY($3::bigint[])"
_RELEASE_ALL = "DELETE FROM broker_reservations WHERE holder = $1"
# The connection failed before or while the statement ran: the pool's connection was dead
# (a database restart), or the database cannot be reached.
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# Of these, the ones of a connection that died under the pool (its state lost mid-statement when
# the server went away): worth one more try on a fresh connection.
_DEAD_CONNECTION = (asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError)
# SQLAlchemy's own connect options, which asyncpg does not know.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")


# A replica serving several requests of one user holds one larger hold for them (a budget)
# instead of a row per request: ``budget_requests`` requests' worth (billing.admissionBudgetRequests),
# granted only while the user's headroom is at least BUDGET_HEADROOM budgets, so that close to
# the end of a balance every request is decided on its own. An unused budget is given back after
# BUDGET_IDLE seconds (the user's next request may come sooner and reuse it). The price: near
# the end of a balance, what other replicas' budgets hold is not available here until they end.
BUDGET_HEADROOM = 4
BUDGET_IDLE = 0.25


@dataclass(slots=True)
class _Snapshot:
    account: Account
    marker: int  # newest settlement nonce recorded for the user when the balance was read
    read_at: float
    headroom: int = 0  # what the last admission left free for the user, across every replica


@dataclass(slots=True)
class _Budget:
    """One hold row that covers several requests of one user on this replica: a slice of the
    user's headroom, used up by the requests it admits.

    A request takes its reservation from the slice (``used``); when it ends, what it was charged
    stays taken (``spent``: that fee is now counted as unsettled too) and only the rest comes
    back. So everything admitted through the slice costs at most ``amount``, which the database
    counted when it granted it, and its row only ever over-counts (spent fees twice) until it is
    dropped.
    """

    user: str
    row_id: int
    amount: int
    used: int = 0
    spent: int = 0
    idle_since: float | None = None

    def fits(self, amount: int) -> bool:
        return self.used + self.spent + amount <= self.amount


class SharedReservation:
    """A hold in ``broker_reservations`` (its own row, or a share of a budget's); ``charge`` or
    ``release`` it exactly once."""

    __slots__ = ("_budget", "_done", "_guard", "amount", "id", "user")

    def __init__(
        self, guard: SharedBalanceGuard, row_id: int, user: str, amount: int, budget: _Budget | None = None
    ) -> None:
        self._guard = guard
        self.id = row_id
        self.user = user
        self.amount = amount
        self._budget = budget
        self._done = False

    def charge(self, fee: int) -> None:
        """The fee is recorded (committed before this call): the hold goes."""
        if not self._done and self._budget is not None:
            self._done = True
            self._guard._give_back(self._budget, self.amount, min(fee, self.amount))
            return
        self.release()

    def release(self) -> None:
        if not self._done:
            self._done = True
            if self._budget is not None:
                self._guard._give_back(self._budget, self.amount, 0)
            else:
                self._guard._drop(self.id)


class SharedBalanceGuard:
    """Admission over shared reservations; the same interface as ``BalanceGuard``.

    Its statements go through a small asyncpg pool of its own rather than the engine: one
    admission per charged request is the broker's hottest database path, and the ORM layer's
    checkout (with its pre-ping round trip) cost several times the statement itself.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        fetch: AccountFetch,
        *,
        ttl: float = 30.0,
        snapshot_ttl: float = 3.0,
        min_locked: int = 0,
        pool_size: int = 8,
        budget_requests: int = 16,
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("shared admission needs PostgreSQL")
        self._engine = engine
        _, connect = engine.sync_engine.dialect.create_connect_args(engine.url)
        self._connect: dict[str, Any] = {k: v for k, v in connect.items() if k not in _SQLALCHEMY_ONLY}
        self._pool_size = pool_size
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._fetch = fetch
        self._ttl = ttl
        self._snapshot_ttl = snapshot_ttl
        self._min_locked = min_locked
        self.holder = f"{uuid.uuid4().hex[:16]}"
        self._snapshots: dict[str, _Snapshot] = {}
        self._budget_requests = budget_requests
        self._budgets: dict[str, _Budget] = {}
        self._granting: dict[str, asyncio.Future[None]] = {}  # a budget being granted, per user
        self._stopped = False
        self._live: set[int] = set()
        self._dropping: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._renew_loop(), name="reservation-renewal")

    async def stop(self) -> None:
        self._stopped = True  # late drops and budget expiries do nothing: every row goes below
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._flushing is not None:
            await self._flushing
        await self._flush_drops()
        if self._pool is None:
            return  # never admitted anything: no row of this replica to release
        try:
            await self._run("execute", _RELEASE_ALL, self.holder)
        except StorageUnavailable as exc:
            logger.warning("reservations of %s not released at shutdown (they expire): %s", self.holder, exc)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*_DB_ERRORS):
                await asyncio.wait_for(pool.close(), 5)

    async def _open(self) -> Any:
        if self._stopped:
            raise StorageUnavailable("the broker is stopping")
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    **self._connect,
                    min_size=0,
                    max_size=self._pool_size,
                    command_timeout=10,
                    reset=_no_reset,
                )
        return self._pool

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        """``fetchrow``/``fetchval``/``execute`` on the pool; a dead pooled connection (the
        database restarted since it was opened) is replaced and the statement tried once more."""
        for attempt in (0, 1):
            try:
                pool = self._pool or await self._open()
                return await getattr(pool, method)(sql, *args)
            except _DEAD_CONNECTION as exc:
                if attempt:
                    raise _unavailable(exc) from None
            except _DB_ERRORS as exc:
                raise _unavailable(exc) from None
        raise AssertionError("unreachable")

    def _expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._ttl)

    async def _snapshot(self, user: str, fresh: bool) -> _Snapshot:
        snap = self._snapshots.get(user)
        if snap is not None and not fresh and time.monotonic() - snap.read_at < self._snapshot_ttl:
            return snap
        # The marker first, then the chain: a settlement between the two makes the marker old,
        # and the admission reads the snapshot again (never the other way round).
        marker = int(await self._run("fetchval", _MARKER, user))
        account = await self._fetch(user)
        if account is None:
            raise InsufficientBalance("no sub-account with this provider")
        snap = self._snapshots[user] = _Snapshot(account, marker, time.monotonic())
        return snap

    async def reserve(
        self, user: str, account: Account, amount: int, *, fresh: bool = False
    ) -> SharedReservation:
        """Hold ``amount`` for ``user`` or raise InsufficientBalance / OutstandingDebt.

        ``account`` (the caller's cached read) is not used for the balance: admission takes the
        balance from this guard's own snapshot, read consistently with the settlement marker.
        """
        user = user.lower()
        while True:
            budget = self._budgets.get(user)
            if budget is not None and not fresh and budget.fits(amount):
                budget.used += amount  # no await since the check: no other request can slip in
                budget.idle_since = None
                return SharedReservation(self, budget.row_id, user, amount, budget)
            granting = self._granting.get(user)
            if granting is None or fresh:
                break
            # A budget for this user is being granted by a request just before: wait for it.
            await asyncio.shield(granting)
        reread = fresh
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            snap = await self._snapshot(user, reread)
            available = snap.account.balance - snap.account.pending_refund - self._min_locked
            # A (new) budget only when there is room for several; the full one it replaces goes
            # when its last request ends.
            want = amount * self._budget_requests
            if fresh or user in self._granting or snap.headroom < want * BUDGET_HEADROOM or want == 0:
                want = amount
            granted: asyncio.Future[None] | None = None
            budget = None
            if want > amount:
                granted = self._granting[user] = asyncio.get_running_loop().create_future()
            try:
                status, row_id, owed = await self._run(
                    "fetchrow", _ADMIT, user, want, self.holder, self._expiry(), available, snap.marker
                )
                if status == 0 and want > amount:
                    self._live.add(int(row_id))
                    budget = self._budgets[user] = _Budget(user, int(row_id), want, used=amount)
            finally:
                if granted is not None:
                    del self._granting[user]
                    granted.set_result(None)
            if status == 3 and want > amount:
                want = amount  # the headroom has gone since: this request alone, at once
                status, row_id, owed = await self._run(
                    "fetchrow", _ADMIT, user, want, self.holder, self._expiry(), available, snap.marker
                )
            if status == 1:
                reread = True  # settled since the balance was read: read it again
                continue
            if status == 2:
                raise OutstandingDebt(f"unpaid fees of {fmt_og(int(owed))} from an earlier settlement")
            snap.headroom = max(available - int(owed) - (want if status == 0 else 0), 0)
            if status == 3 and not last and (self._dropping or self._flushing_now() or self._idle(user)):
                # Holds this replica has already let go of (or keeps unused) may still be rows:
                # never refuse on them.
                self._retire(user)
                await self._settle_drops()
                continue
            if status == 3:
                raise InsufficientBalance(
                    f"this request may cost up to {fmt_og(amount)}, only {fmt_og(snap.headroom)} is"
                    " available (balance minus pending refunds, unsettled fees and requests in flight"
                    " on every replica)"
                )
            if budget is not None:
                return SharedReservation(self, int(row_id), user, amount, budget)
            self._live.add(int(row_id))
            return SharedReservation(self, int(row_id), user, amount)
        raise StorageUnavailable("settlements keep landing for this user; try again", code="admission_busy")

    def _idle(self, user: str) -> bool:
        budget = self._budgets.get(user)
        return budget is not None and budget.used == 0

    def _give_back(self, budget: _Budget, amount: int, fee: int) -> None:
        """A request covered by ``budget`` is over; ``fee`` of it was charged (and recorded)."""
        budget.used -= amount
        budget.spent += fee
        if budget.used > 0:
            return
        if self._budgets.get(budget.user) is not budget:
            self._drop(budget.row_id)  # replaced meanwhile: nobody will use it again
            return
        if budget.amount - budget.spent < budget.amount // self._budget_requests:
            self._retire(budget.user)  # used up: its spent fees stop counting twice at once
            return
        budget.idle_since = time.monotonic()
        asyncio.get_running_loop().call_later(BUDGET_IDLE, self._expire, budget)

    def _expire(self, budget: _Budget) -> None:
        idle = budget.idle_since
        if self._budgets.get(budget.user) is not budget or idle is None:
            return  # replaced (and dropped already), or in use again
        if budget.used == 0 and time.monotonic() - idle >= BUDGET_IDLE * 0.99:
            self._retire(budget.user)

    def _retire(self, user: str) -> None:
        """Give an unused budget of ``user`` back to the database (its row dropped)."""
        budget = self._budgets.get(user)
        if budget is not None and budget.used == 0:
            del self._budgets[user]
            self._drop(budget.row_id)

    async def unsettled(self, user: str) -> int:
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(_STATE, {"u": user.lower(), "now": datetime.now(UTC)})).one()
        except (SQLAlchemyError, OSError):
            raise StorageUnavailable("the broker's database cannot be read") from None
        return int(row[1])

    def invalidate(self, user: str | None = None) -> None:
        """Forget balance snapshots (after a settlement); the next admission reads the chain."""
        if user is None:
            self._snapshots.clear()
        else:
            self._snapshots.pop(user.lower(), None)

    def _drop(self, row_id: int) -> None:
        if self._stopped:
            return
        self._live.discard(row_id)
        self._dropping.add(row_id)
        if self._flushing is None or self._flushing.done():
            # Soon, batched: holds released within one event-loop turn go in one statement.
            self._flushing = asyncio.get_running_loop().create_task(self._flush_drops())

    def _flushing_now(self) -> bool:
        return self._flushing is not None and not self._flushing.done()

    async def _settle_drops(self) -> None:
        if self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
        await self._flush_drops()

    async def _flush_drops(self) -> None:
        # Drops that arrive while a batch is being written go in the next batch, at once.
        while self._dropping:
            ids, self._dropping = list(self._dropping), set()
            try:
                await self._run("execute", _DROP, ids)
            except StorageUnavailable:
                # They expire on their own; until then they only make admission stricter.
                logger.warning("could not drop %d reservations yet", len(ids))
                self._dropping.update(ids)
                return

    async def _renew_loop(self) -> None:
        interval = min(self._ttl / 3, 1.0)
        while True:
            await asyncio.sleep(interval)
            await self._flush_drops()
            if not self._live:
                continue
            try:
                await self._run("execute", _RENEW, self._expiry(), self.holder, list(self._live))
            except StorageUnavailable:
                logger.warning("reservations not renewed")


async def _no_reset(connection: Any) -> None:
    """The guard's statements leave no session state behind (the advisory lock is the
    transaction's): a connection back in the pool needs no reset round trip."""


def _unavailable(exc: BaseException) -> StorageUnavailable:
    logger.error("shared admission cannot reach the database: %s", type(exc).__name__)
    return StorageUnavailable("the broker's database cannot be read")
