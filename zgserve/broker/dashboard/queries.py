"""Read-only queries the admin API adds for the dashboard: earnings, traffic, transactions.

Everything else the dashboard shows comes from the admin API's existing queries
(:mod:`zgserve.broker.db.repo`, :mod:`zgserve.broker.settlement.queries`,
:func:`zgserve.broker.routes.admin.load_users`). Sums are grouped in SQL; on SQLite,
where amounts are text, SQL sums them as integers only when every amount has at most
18 digits (an int64 cannot wrap then) and Python sums them otherwise, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import BigInteger, ColumnElement, Table, and_, case, func, literal, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from zgserve.broker.db.models import RequestRow
from zgserve.broker.settlement.models import BatchRow, EntryRow, EntryStatus

_REQ = cast(Table, RequestRow.__table__)
_E = cast(Table, EntryRow.__table__)
_B = cast(Table, BatchRow.__table__)
_INT64_DIGITS = 18


@dataclass(slots=True)
class TrafficBucket:
    """Charged requests of one model in one time bucket."""

    start: int  # unix seconds
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    fee: int = 0
    incomplete: int = 0  # client gone mid-stream, or usage estimated


@dataclass(frozen=True, slots=True)
class Transaction:
    """One settlement transaction (a batch) with what its entries collected."""

    id: int
    tx_hash: str
    state: str
    block_number: int | None
    gas_used: int | None
    gas_price: int
    sends: int
    error: str | None
    created_at: datetime | None
    entries: int
    partial: int
    failed: int
    paid: int
    unpaid: int

    @property
    def gas_cost(self) -> int | None:
        return None if self.gas_used is None else self.gas_used * self.gas_price


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _epoch_bucket(conn: AsyncConnection, column: Any, bucket_s: int) -> ColumnElement[int]:
    """``column`` (a UTC datetime) as the unix second its bucket starts at."""
    if conn.dialect.name == "postgresql":
        seconds = func.cast(func.floor(func.extract("epoch", column)), BigInteger)
    else:
        seconds = func.cast(func.strftime("%s", column), BigInteger)
    return cast(ColumnElement[int], (seconds // bucket_s) * bucket_s)


async def settled_on_chain(conn: AsyncConnection) -> int:
    """What settled entries collected on chain (``paid`` from their transactions' events)."""
    rows = await conn.execute(select(_E.c.paid).where(_E.c.status.in_(EntryStatus.SETTLED)))
    return sum(int(r[0] or 0) for r in rows)


async def paid_series(conn: AsyncConnection, since: datetime, bucket_s: int) -> dict[int, int]:
    """``{bucket start: paid}`` of entries settled since ``since``."""
    bucket = _epoch_bucket(conn, _E.c.settled_at, bucket_s)
    where = and_(_E.c.status.in_(EntryStatus.SETTLED), _E.c.settled_at >= since)
    out: dict[int, int] = {}
    for start, paid in await conn.execute(select(bucket, _E.c.paid).where(where)):
        out[int(start)] = out.get(int(start), 0) + int(paid or 0)
    return out


async def traffic_series(conn: AsyncConnection, since: datetime, bucket_s: int) -> list[TrafficBucket]:
    """Charged requests since ``since`` per time bucket and model, oldest first."""
    bucket = _epoch_bucket(conn, _REQ.c.created_at, bucket_s).label("bucket")
    postgres = conn.dialect.name == "postgresql"
    stmt = (
        select(
            bucket,
            _REQ.c.model,
            func.count(),
            func.coalesce(func.sum(_REQ.c.input_tokens), 0),
            func.coalesce(func.sum(_REQ.c.output_tokens), 0),
            func.sum(_REQ.c.fee) if postgres else func.sum(func.cast(_REQ.c.fee, BigInteger)),
            func.sum(case((_REQ.c.status != "complete", 1), else_=0)),
            literal(0) if postgres else func.max(func.length(_REQ.c.fee)),
        )
        .where(_REQ.c.created_at >= since)
        .group_by(bucket, _REQ.c.model)
        .order_by(bucket, _REQ.c.model)
    )
    try:
        rows = (await conn.execute(stmt)).all()
    except OperationalError:  # SQLite: an integer sum overflowed; Python sums the fees instead
        return await _traffic_in_python(conn, since, bucket_s)
    if not all(int(r[7] or 0) <= _INT64_DIGITS for r in rows):
        return await _traffic_in_python(conn, since, bucket_s)
    return [
        TrafficBucket(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5] or 0), int(r[6] or 0))
        for r in rows
    ]


async def _traffic_in_python(conn: AsyncConnection, since: datetime, bucket_s: int) -> list[TrafficBucket]:
    bucket = _epoch_bucket(conn, _REQ.c.created_at, bucket_s)
    cols = (bucket, _REQ.c.model, _REQ.c.input_tokens, _REQ.c.output_tokens, _REQ.c.fee, _REQ.c.status)
    found: dict[tuple[int, str], TrafficBucket] = {}
    for start, model, tin, tout, fee, status in await conn.execute(
        select(*cols).where(_REQ.c.created_at >= since)
    ):
        b = found.setdefault((int(start), str(model)), TrafficBucket(int(start), str(model)))
        b.requests += 1
        b.input_tokens += int(tin)
        b.output_tokens += int(tout)
        b.fee += int(fee)
        b.incomplete += status != "complete"
    return [found[k] for k in sorted(found)]


async def spent_by_user(conn: AsyncConnection) -> dict[str, tuple[int, int]]:
    """``{user: (requests, fees recorded)}`` over all time: the top spenders."""
    if conn.dialect.name == "postgresql":
        stmt = select(_REQ.c.user, func.count(), func.sum(_REQ.c.fee)).group_by(_REQ.c.user)
        return {str(u): (int(n), int(fee)) for u, n, fee in await conn.execute(stmt)}
    fast = select(
        _REQ.c.user,
        func.count(),
        func.sum(func.cast(_REQ.c.fee, BigInteger)),
        func.max(func.length(_REQ.c.fee)),
    ).group_by(_REQ.c.user)
    try:
        rows = (await conn.execute(fast)).all()
        if all(int(r[3] or 0) <= _INT64_DIGITS for r in rows):
            return {str(r[0]): (int(r[1]), int(r[2] or 0)) for r in rows}
    except OperationalError:
        pass
    out: dict[str, tuple[int, int]] = {}
    for user, fee in await conn.execute(select(_REQ.c.user, _REQ.c.fee)):
        n, total = out.get(user, (0, 0))
        out[str(user)] = (n + 1, total + int(fee))
    return out


async def transactions(conn: AsyncConnection, *, offset: int, limit: int) -> tuple[list[Transaction], int]:
    """Settlement transactions newest first, each with its entries' outcome, and the total count."""
    total = int((await conn.execute(select(func.count()).select_from(_B))).scalar() or 0)
    batches = (
        await conn.execute(
            select(
                _B.c.id,
                _B.c.tx_hash,
                _B.c.state,
                _B.c.block_number,
                _B.c.gas_used,
                _B.c.gas_price,
                _B.c.sends,
                _B.c.error,
                _B.c.created_at,
            )
            .order_by(_B.c.id.desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    ids = [int(b[0]) for b in batches]
    agg: dict[int, list[int]] = {i: [0, 0, 0, 0, 0] for i in ids}  # entries, partial, failed, paid, unpaid
    if ids:
        rows = await conn.execute(
            select(_E.c.batch_id, _E.c.status, _E.c.paid, _E.c.unpaid).where(_E.c.batch_id.in_(ids))
        )
        for batch_id, status, paid, unpaid in rows:
            a = agg[int(batch_id)]
            a[0] += 1
            a[1] += status == EntryStatus.PARTIAL
            a[2] += status not in (*EntryStatus.SETTLED, EntryStatus.PENDING)
            a[3] += int(paid or 0)
            a[4] += int(unpaid or 0)
    out = [
        Transaction(
            id=int(b[0]),
            tx_hash=str(b[1]),
            state=str(b[2]),
            block_number=None if b[3] is None else int(b[3]),
            gas_used=None if b[4] is None else int(b[4]),
            gas_price=int(b[5]),
            sends=int(b[6]),
            error=b[7],
            created_at=_aware(b[8]),
            entries=agg[int(b[0])][0],
            partial=agg[int(b[0])][1],
            failed=agg[int(b[0])][2],
            paid=agg[int(b[0])][3],
            unpaid=agg[int(b[0])][4],
        )
        for b in batches
    ]
    return out, total
