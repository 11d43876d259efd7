"""Reads of the settlement journal and the broker's request table.

For the engine: what each user owes that no live entry has claimed
(:func:`claimable_users`, :func:`unsettled_rows`) and the nonces already used
(:func:`last_nonces`). For the API and operators: :func:`history`,
:func:`entry_detail` and :func:`open_debt_total`. Amounts are summed in Python
where SQLite stores them as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from zgserve.broker.db.models import RequestRow
from zgserve.broker.settlement.models import BatchRow, ClaimRow, DebtRow, EntryRow, ReceiptRow
from zgserve.broker.settlement.receipts import Receipt

_B = cast(Table, BatchRow.__table__)
_E = cast(Table, EntryRow.__table__)
_R = cast(Table, ReceiptRow.__table__)
_C = cast(Table, ClaimRow.__table__)
_D = cast(Table, DebtRow.__table__)
_REQ = cast(Table, RequestRow.__table__)


@dataclass(slots=True)
class ClaimableUser:
    """What a user owes that no live entry has claimed yet."""

    user: str
    unsettled: int = 0
    oldest_at: datetime | None = None
    debts: list[tuple[int, int, int]] = field(default_factory=list)  # (debt id, source nonce, amount)

    @property
    def debt(self) -> int:
        return sum(d[2] for d in self.debts)


# -- reads for the engine --------------------------------------------------------------------


def _unclaimed() -> Any:
    return and_(
        _REQ.c.settled.is_(False),
        ~exists().where(_C.c.user == _REQ.c.user, _C.c.request_id == _REQ.c.request_id),
    )


async def claimable_users(
    conn: AsyncConnection, users: Sequence[str] | None = None
) -> dict[str, ClaimableUser]:
    """Per user: unsettled, unclaimed fees (and the oldest one's time) and unclaimed open debts."""
    wanted = [u.lower() for u in users] if users is not None else None
    out: dict[str, ClaimableUser] = {}
    where = _unclaimed()
    if wanted is not None:
        where = and_(where, _REQ.c.user.in_(wanted))
    if conn.dialect.name == "postgresql":
        stmt = select(_REQ.c.user, func.sum(_REQ.c.fee), func.min(_REQ.c.created_at)).where(where)
        for user, fee, oldest in await conn.execute(stmt.group_by(_REQ.c.user)):
            out[user] = ClaimableUser(user, int(fee), _aware(oldest))
    else:
        for user, fee, created in await conn.execute(
            select(_REQ.c.user, _REQ.c.fee, _REQ.c.created_at).where(where)
        ):
            cu = out.setdefault(user, ClaimableUser(user))
            cu.unsettled += int(fee)
            created = _aware(created)
            if cu.oldest_at is None or (created is not None and created < cu.oldest_at):
                cu.oldest_at = created
    dwhere = and_(_D.c.cleared.is_(False), _D.c.claimed_by.is_(None))
    if wanted is not None:
        dwhere = and_(dwhere, _D.c.user.in_(wanted))
    stmt = select(_D.c.user, _D.c.id, _D.c.source_nonce, _D.c.amount).where(dwhere).order_by(_D.c.id)
    for row in await conn.execute(stmt):
        out.setdefault(row[0], ClaimableUser(row[0])).debts.append((int(row[1]), int(row[2]), int(row[3])))
    return out


@dataclass(frozen=True, slots=True)
class UnsettledRow:
    row_id: int
    request_id: str
    user: str
    input_tokens: int
    output_tokens: int
    fee: int
    response_id: str | None


async def unsettled_rows(conn: AsyncConnection, user: str) -> list[UnsettledRow]:
    """A user's recorded, unsettled and unclaimed requests (what an entry would cover)."""
    stmt = (
        select(
            _REQ.c.id,
            _REQ.c.request_id,
            _REQ.c.user,
            _REQ.c.input_tokens,
            _REQ.c.output_tokens,
            _REQ.c.fee,
            _REQ.c.response_id,
        )
        .where(_unclaimed(), _REQ.c.user == user.lower())
        .order_by(_REQ.c.id)
    )
    return [
        UnsettledRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6])
        for r in await conn.execute(stmt)
    ]


async def last_nonces(conn: AsyncConnection, users: Sequence[str]) -> dict[str, int]:
    """The highest settlement nonce we ever journaled for each user (any outcome)."""
    out: dict[str, int] = {}
    if not users:
        return out
    rows = await conn.execute(select(_E.c.user, _E.c.nonce).where(_E.c.user.in_([u.lower() for u in users])))
    for user, nonce in rows:
        out[user] = max(out.get(user, 0), int(nonce))
    return out


async def open_debt_total(conn: AsyncConnection) -> tuple[int, int]:
    """(users in debt, total open debt) for metrics."""
    per_user: dict[str, int] = {}
    for user, amount in await conn.execute(select(_D.c.user, _D.c.amount).where(_D.c.cleared.is_(False))):
        per_user[user] = per_user.get(user, 0) + int(amount)
    return len(per_user), sum(per_user.values())


# -- reads for the API -----------------------------------------------------------------------


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class SettlementRecord:
    """One entry as the API shows it."""

    id: int
    user: str
    nonce: int
    total_fee: int
    requests_hash: str
    signature: str
    trigger: str
    status: str
    paid: int | None
    unpaid: int | None
    receipt_count: int
    created_at: datetime | None
    settled_at: datetime | None
    batch_id: int
    tx_hash: str
    block_number: int | None
    batch_state: str


_RECORD_COLS = (
    _E.c.id,
    _E.c.user,
    _E.c.nonce,
    _E.c.total_fee,
    _E.c.requests_hash,
    _E.c.signature,
    _E.c.trigger,
    _E.c.status,
    _E.c.paid,
    _E.c.unpaid,
    _E.c.receipt_count,
    _E.c.created_at,
    _E.c.settled_at,
    _E.c.batch_id,
    _B.c.tx_hash,
    _B.c.block_number,
    _B.c.state,
)


def _record(r: Any) -> SettlementRecord:
    return SettlementRecord(
        id=int(r[0]),
        user=str(r[1]),
        nonce=int(r[2]),
        total_fee=int(r[3]),
        requests_hash=str(r[4]),
        signature=str(r[5]),
        trigger=str(r[6]),
        status=str(r[7]),
        paid=None if r[8] is None else int(r[8]),
        unpaid=None if r[9] is None else int(r[9]),
        receipt_count=int(r[10]),
        created_at=_aware(r[11]),
        settled_at=_aware(r[12]),
        batch_id=int(r[13]),
        tx_hash=str(r[14]),
        block_number=None if r[15] is None else int(r[15]),
        batch_state=str(r[16]),
    )


async def history(
    conn: AsyncConnection,
    *,
    user: str | None = None,
    status: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[SettlementRecord], int]:
    """Entries newest first, with their transaction, and the total count matching."""
    conds = []
    if user:
        conds.append(_E.c.user == user.lower())
    if status:
        conds.append(_E.c.status == status)
    where = and_(True, *conds)
    total = int((await conn.execute(select(func.count()).select_from(_E).where(where))).scalar() or 0)
    stmt = (
        select(*_RECORD_COLS)
        .select_from(_E.join(_B, _B.c.id == _E.c.batch_id))
        .where(where)
        .order_by(_E.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [_record(r) for r in await conn.execute(stmt)], total


async def entry_detail(
    conn: AsyncConnection, user: str, nonce: int
) -> tuple[SettlementRecord, list[Receipt]] | None:
    """One user's entry by nonce, with its receipts in tree order."""
    stmt = (
        select(*_RECORD_COLS)
        .select_from(_E.join(_B, _B.c.id == _E.c.batch_id))
        .where(_E.c.user == user.lower(), _E.c.nonce == nonce)
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    record = _record(row)
    rows = await conn.execute(
        select(_R.c.request_id, _R.c.user, _R.c.input_tokens, _R.c.output_tokens, _R.c.fee, _R.c.signature_id)
        .where(_R.c.entry_id == record.id)
        .order_by(_R.c.position)
    )
    receipts = [Receipt(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), str(r[5])) for r in rows]
    return record, receipts
