"""Repository functions over the broker tables; the only module that writes SQL.

Every function takes an ``AsyncConnection`` (the caller owns the transaction), so
the settlement engine can combine several of them atomically, e.g.
``mark_settled`` plus ``add_debt`` in one ``engine.begin()`` block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import BigInteger, ColumnElement, Select, Table, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from zgserve.broker.db.models import FeeRecord, RequestRow, UserRow, utcnow

_REQ = cast(Table, RequestRow.__table__)
_USR = cast(Table, UserRow.__table__)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredRequest(FeeRecord):
    """A charged request as stored: the record, its row id and its settlement linkage."""

    id: int
    settled: bool
    settlement_id: int | None
    settlement_nonce: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class StoredUser:
    address: str
    balance: int
    pending_refund: int
    chain_nonce: int
    generation: int
    acknowledged: bool
    synced_at: datetime | None
    debt: int


@dataclasses.dataclass(frozen=True, slots=True)
class RequestPage:
    items: list[StoredRequest]
    total: int
    fee: int


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert(_REQ) if conn.dialect.name == "postgresql" else sqlite.insert(_REQ)


async def insert_records(conn: AsyncConnection, records: Sequence[FeeRecord]) -> None:
    """Insert charged requests; a ``request_id`` already present is left as it is (idempotent)."""
    if not records:
        return
    stmt = _insert(conn).on_conflict_do_nothing(index_elements=["request_id"])
    await conn.execute(stmt, [r.as_row() | {"settled": False} for r in records])


async def _sum_fee(conn: AsyncConnection, where: ColumnElement[bool]) -> int:
    # SQLite keeps amounts as text (see models), so the sum is taken here, exactly, in Python.
    if conn.dialect.name == "postgresql":
        value = (await conn.execute(select(func.coalesce(func.sum(_REQ.c.fee), 0)).where(where))).scalar()
        return int(value or 0)
    # Fast path: when every fee has at most 18 digits, SQLite sums the integers exactly (an
    # int64 overflow raises rather than wrapping); otherwise sum in Python.
    fast = select(func.sum(func.cast(_REQ.c.fee, BigInteger)), func.max(func.length(_REQ.c.fee))).where(where)
    try:
        total, longest = (await conn.execute(fast)).one()
        if longest is None:
            return 0
        if int(longest) <= 18:
            return int(total)
    except OperationalError:
        pass
    rows = await conn.execute(select(_REQ.c.fee).where(where))
    return sum(int(r[0]) for r in rows)


def _unsettled(user: str | None = None) -> ColumnElement[bool]:
    cond = _REQ.c.settled.is_(False)
    return and_(cond, _REQ.c.user == user.lower()) if user else cond


async def unsettled_fee(conn: AsyncConnection, user: str) -> int:
    """Sum of the fees recorded for ``user`` and not yet settled."""
    return await _sum_fee(conn, _unsettled(user))


async def total_unsettled(conn: AsyncConnection) -> int:
    return await _sum_fee(conn, _unsettled())


async def unsettled_by_user(conn: AsyncConnection) -> dict[str, int]:
    """``{user: unsettled fee}`` for every user with unsettled requests."""
    out: dict[str, int] = {}
    if conn.dialect.name == "postgresql":
        stmt = select(_REQ.c.user, func.sum(_REQ.c.fee)).where(_unsettled()).group_by(_REQ.c.user)
        for user, fee in await conn.execute(stmt):
            out[user] = int(fee)
        return out
    for user, fee in await conn.execute(select(_REQ.c.user, _REQ.c.fee).where(_unsettled())):
        out[user] = out.get(user, 0) + int(fee)
    return out


async def unsettled_requests(
    conn: AsyncConnection, user: str, *, up_to_id: int | None = None, limit: int | None = None
) -> list[StoredRequest]:
    """A user's unsettled requests, oldest first (what a settlement would cover)."""
    where = _unsettled(user)
    if up_to_id is not None:
        where = and_(where, _REQ.c.id <= up_to_id)
    stmt = select(_REQ).where(where).order_by(_REQ.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_request(row._mapping) for row in await conn.execute(stmt)]


async def mark_settled(
    conn: AsyncConnection, ids: Iterable[int], *, settlement_id: int | None, settlement_nonce: int | None
) -> int:
    """Flag requests as settled by one settlement; returns how many rows changed."""
    id_list = list(ids)
    if not id_list:
        return 0
    stmt = (
        update(_REQ)
        .where(_REQ.c.id.in_(id_list), _REQ.c.settled.is_(False))
        .values(settled=True, settlement_id=settlement_id, settlement_nonce=settlement_nonce)
    )
    result = await conn.execute(stmt)
    return int(result.rowcount)


async def list_requests(
    conn: AsyncConnection,
    *,
    user: str | None = None,
    settled: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    response_id: str | None = None,
    offset: int = 0,
    limit: int = 100,
    order: Literal["asc", "desc"] = "desc",
) -> RequestPage:
    """A page of requests matching the filters, the total count and the total fee of all matches."""
    conds: list[ColumnElement[bool]] = []
    if user:
        conds.append(_REQ.c.user == user.lower())
    if settled is not None:
        conds.append(_REQ.c.settled.is_(settled))
    if since is not None:
        conds.append(_REQ.c.created_at >= since)
    if until is not None:
        conds.append(_REQ.c.created_at < until)
    if response_id:
        conds.append(_REQ.c.response_id == response_id)
    where = and_(True, *conds)
    total = int((await conn.execute(select(func.count()).select_from(_REQ).where(where))).scalar() or 0)
    fee = await _sum_fee(conn, where)
    key = _REQ.c.id.asc() if order == "asc" else _REQ.c.id.desc()
    stmt: Select[Any] = select(_REQ).where(where).order_by(key).offset(offset).limit(limit)
    items = [_request(row._mapping) for row in await conn.execute(stmt)]
    return RequestPage(items=items, total=total, fee=fee)


async def get_user(conn: AsyncConnection, address: str) -> StoredUser | None:
    row = (await conn.execute(select(_USR).where(_USR.c.address == address.lower()))).first()
    return StoredUser(**_user_fields(row._mapping)) if row else None


async def list_users(conn: AsyncConnection, *, offset: int = 0, limit: int = 100) -> list[StoredUser]:
    stmt = select(_USR).order_by(_USR.c.address).offset(offset).limit(limit)
    return [StoredUser(**_user_fields(r._mapping)) for r in await conn.execute(stmt)]


def _user_fields(mapping: Any) -> dict[str, Any]:
    out = {f.name: mapping[f.name] for f in dataclasses.fields(StoredUser)}
    out["synced_at"] = _aware(out["synced_at"])
    return out


def _request(mapping: Any) -> StoredRequest:
    fields = dict(mapping)
    fields["created_at"] = _aware(fields["created_at"])
    return StoredRequest(**fields)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


async def save_chain_state(
    conn: AsyncConnection,
    address: str,
    *,
    balance: int,
    pending_refund: int,
    chain_nonce: int,
    generation: int,
    acknowledged: bool,
) -> None:
    """Upsert the cached chain view of a user (keeps their debt)."""
    values = {
        "balance": balance,
        "pending_refund": pending_refund,
        "chain_nonce": chain_nonce,
        "generation": generation,
        "acknowledged": acknowledged,
        "synced_at": utcnow(),
        "updated_at": utcnow(),
    }
    ins = (postgresql.insert(_USR) if conn.dialect.name == "postgresql" else sqlite.insert(_USR)).values(
        address=address.lower(), debt=0, created_at=utcnow(), **values
    )
    await conn.execute(ins.on_conflict_do_update(index_elements=["address"], set_=values))


async def user_debt(conn: AsyncConnection, address: str) -> int:
    value = (await conn.execute(select(_USR.c.debt).where(_USR.c.address == address.lower()))).scalar()
    return int(value or 0)


async def set_debt(conn: AsyncConnection, address: str, debt: int) -> None:
    """Set a user's outstanding debt (the unpaid part of a PARTIAL settlement); 0 clears it."""
    if debt < 0:
        raise ValueError("debt cannot be negative")
    ins = (postgresql.insert(_USR) if conn.dialect.name == "postgresql" else sqlite.insert(_USR)).values(
        address=address.lower(),
        balance=0,
        pending_refund=0,
        chain_nonce=0,
        generation=0,
        acknowledged=False,
        debt=debt,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    await conn.execute(
        ins.on_conflict_do_update(index_elements=["address"], set_={"debt": debt, "updated_at": utcnow()})
    )
