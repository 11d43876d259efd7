"""The settlement journal: every write the engine makes, each in the caller's transaction.

The write-ahead rule: a batch's entries, nonces, receipts, claims and the raw
signed transaction are committed by :func:`journal_batch` *before* the
transaction is broadcast, and so is every replacement of a stuck transaction
(:func:`journal_replacement`: same sender nonce and calldata, higher gas price).
A batch thus has one or more candidate transactions, of which at most one can be
mined. After that, exactly one of three functions closes it, each guarded by a
fence (``state IN ('signed','sent')``) so that an outcome is recorded once even if
two processes race to reconcile the same batch:

* :func:`record_outcome` -- a candidate was mined: statuses from
  ``TEESettlementResult`` events; SUCCESS/PARTIAL mark the broker's request rows
  settled, PARTIAL opens a debt; failed entries give their claims back.
* :func:`release_batch` -- reverted on chain, or abandoned because its sender
  nonce was consumed by a transaction that is none of its candidates: claims are
  given back, except for entries whose settlement nonce the chain shows as
  consumed (``unverified``, counted as settled -- a fee is never settled twice).

:func:`open_batches` lists what is still to be closed; other reads are in ``queries``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zgserve.broker.db import repo
from zgserve.broker.db.engine import migrate as broker_migrate
from zgserve.broker.db.models import RequestRow, utcnow
from zgserve.broker.settlement.models import (
    BatchRow,
    BatchState,
    ClaimRow,
    DebtRow,
    EntryRow,
    EntryStatus,
    ReceiptRow,
    TransactionRow,
)
from zgserve.broker.settlement.receipts import Receipt
from zgserve.chain.types import SettlementResult, SettlementStatus

_B = cast(Table, BatchRow.__table__)
_E = cast(Table, EntryRow.__table__)
_R = cast(Table, ReceiptRow.__table__)
_C = cast(Table, ClaimRow.__table__)
_D = cast(Table, DebtRow.__table__)
_T = cast(Table, TransactionRow.__table__)
_REQ = cast(Table, RequestRow.__table__)

_STATUS_NAMES = {s: s.name.lower() for s in SettlementStatus}


class ClaimConflict(Exception):
    """Another entry already claims one of these requests or debts (a concurrent settler)."""


# -- schema ----------------------------------------------------------------------------------


async def migrate(engine: AsyncEngine) -> None:
    """Bring broker and settlement tables to the newest revision.

    The broker's migrations include this package's revisions (``migrations/`` is one of
    its version locations), so this is the broker's own ``migrate``.
    """
    await broker_migrate(engine)


async def ensure_schema(engine: AsyncEngine) -> None:
    """Create the settlement tables if this database does not have them (all) yet."""
    async with engine.connect() as conn:
        present = await conn.run_sync(lambda c: inspect(c).has_table(TransactionRow.__tablename__))
    if not present:
        await migrate(engine)


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """One signed entry about to be journaled."""

    user: str
    nonce: int
    total_fee: int
    requests_hash: bytes
    signature: bytes
    trigger: str
    receipts: tuple[Receipt, ...]  # canonical (tree) order
    request_row_ids: dict[str, int] = field(default_factory=dict)  # request id -> broker row id
    debt_ids: tuple[int, ...] = ()  # debts paid by this entry's carry-over receipts


@dataclass(frozen=True, slots=True)
class JournaledEntry:
    id: int
    user: str
    nonce: int
    total_fee: int
    trigger: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One signed transaction of a batch; ``broadcast_at``: first broadcast attempt (unix s)."""

    tx_hash: str
    raw_tx: bytes
    gas_price: int
    broadcast_at: float | None


@dataclass(frozen=True, slots=True)
class OpenBatch:
    id: int
    tx_nonce: int
    sends: int
    entries: tuple[JournaledEntry, ...]
    candidates: tuple[Candidate, ...]  # oldest first; all share ``tx_nonce``

    @property
    def latest(self) -> Candidate:
        return self.candidates[-1]

    @property
    def tx_hash(self) -> str:
        return self.latest.tx_hash

    @property
    def tx_hashes(self) -> list[str]:
        return [c.tx_hash for c in self.candidates]


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    entry_id: int
    user: str
    nonce: int
    status: str
    total_fee: int
    paid: int
    unpaid: int
    requests_fee: int = 0  # part of total_fee from recorded requests (not carried-over debt)


# -- writes ----------------------------------------------------------------------------------


async def journal_batch(
    conn: AsyncConnection,
    *,
    provider: str,
    tx_hash: str,
    tx_nonce: int,
    raw_tx: bytes,
    gas_limit: int,
    gas_price: int,
    holder: str,
    entries: Sequence[PreparedEntry],
) -> tuple[int, list[int]]:
    """Write a batch and its entries, receipts and claims; raise :class:`ClaimConflict` on a race.

    An ``IntegrityError`` from the claim insert also means a conflict; the caller's
    transaction must then be rolled back (``engine.begin()`` does it).
    """
    now = utcnow()
    batch_id = (
        await conn.execute(
            insert(_B)
            .values(
                provider=provider.lower(),
                state=BatchState.SIGNED,
                tx_hash=tx_hash,
                tx_nonce=tx_nonce,
                raw_tx=raw_tx,
                gas_limit=gas_limit,
                gas_price=gas_price,
                holder=holder,
                sends=0,
                created_at=now,
                updated_at=now,
            )
            .returning(_B.c.id)
        )
    ).scalar_one()
    await conn.execute(
        insert(_T).values(
            batch_id=batch_id, tx_hash=tx_hash, raw_tx=raw_tx, gas_price=gas_price, created_at=now
        )
    )
    entry_ids: list[int] = []
    for e in entries:
        user = e.user.lower()
        entry_id = (
            await conn.execute(
                insert(_E)
                .values(
                    batch_id=batch_id,
                    user=user,
                    nonce=e.nonce,
                    total_fee=e.total_fee,
                    requests_hash="0x" + e.requests_hash.hex(),
                    signature="0x" + e.signature.hex(),
                    trigger=e.trigger,
                    status=EntryStatus.PENDING,
                    receipt_count=len(e.receipts),
                    created_at=now,
                )
                .returning(_E.c.id)
            )
        ).scalar_one()
        entry_ids.append(entry_id)
        await conn.execute(
            insert(_R),
            [
                {
                    "entry_id": entry_id,
                    "position": i,
                    "request_id": r.request_id,
                    "request_row_id": e.request_row_ids.get(r.request_id),
                    "user": r.user.lower(),
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "fee": r.fee,
                    "signature_id": r.signature_id,
                }
                for i, r in enumerate(e.receipts)
            ],
        )
        await conn.execute(
            insert(_C), [{"user": user, "request_id": r.request_id, "entry_id": entry_id} for r in e.receipts]
        )
        if e.debt_ids:
            claimed = await conn.execute(
                update(_D)
                .where(_D.c.id.in_(e.debt_ids), _D.c.claimed_by.is_(None), _D.c.cleared.is_(False))
                .values(claimed_by=entry_id)
            )
            if claimed.rowcount != len(e.debt_ids):
                raise ClaimConflict(f"a debt of {user} is already being claimed")
    return batch_id, entry_ids


async def mark_sent(
    conn: AsyncConnection, batch_id: int, tx_hash: str, *, at: float, accepted: bool = True
) -> None:
    """Note a broadcast attempt of candidate ``tx_hash`` at ``at`` (unix s).

    The candidate's first attempt starts its replacement clock, whether the node took it
    or not (a refused one, e.g. underpriced, must be replaced too); an accepted one also
    moves the batch to ``sent``.
    """
    await conn.execute(
        update(_T).where(_T.c.tx_hash == tx_hash, _T.c.broadcast_at.is_(None)).values(broadcast_at=at)
    )
    if accepted:
        await conn.execute(
            update(_B)
            .where(_B.c.id == batch_id, _B.c.state.in_(BatchState.OPEN))
            .values(state=BatchState.SENT, sends=_B.c.sends + 1, updated_at=utcnow())
        )


async def journal_replacement(
    conn: AsyncConnection, batch_id: int, *, replaces: str, tx_hash: str, raw_tx: bytes, gas_price: int
) -> bool:
    """Add a replacement candidate to an open batch whose newest candidate is ``replaces``.

    False (nothing written) if the batch was closed or replaced meanwhile.
    """
    moved = await conn.execute(
        update(_B)
        .where(_B.c.id == batch_id, _B.c.state.in_(BatchState.OPEN), _B.c.tx_hash == replaces)
        .values(tx_hash=tx_hash, raw_tx=raw_tx, gas_price=gas_price, updated_at=utcnow())
    )
    if moved.rowcount != 1:
        return False
    await conn.execute(
        insert(_T).values(
            batch_id=batch_id, tx_hash=tx_hash, raw_tx=raw_tx, gas_price=gas_price, created_at=utcnow()
        )
    )
    return True


async def _close(
    conn: AsyncConnection, batch_id: int, state: str, *, mined: str | None = None, **values: Any
) -> bool:
    """The fence: move an open batch to ``state``; False if someone already closed it.

    ``mined``: the candidate that was mined; the batch then shows its hash, bytes and price.
    """
    if mined is not None:
        row = (
            await conn.execute(
                select(_T.c.raw_tx, _T.c.gas_price).where(_T.c.batch_id == batch_id, _T.c.tx_hash == mined)
            )
        ).first()
        if row is not None:
            values.update(tx_hash=mined, raw_tx=bytes(row[0]), gas_price=int(row[1]))
    result = await conn.execute(
        update(_B)
        .where(_B.c.id == batch_id, _B.c.state.in_(BatchState.OPEN))
        .values(state=state, updated_at=utcnow(), **values)
    )
    return bool(result.rowcount == 1)


async def _entries_of(conn: AsyncConnection, batch_id: int) -> list[JournaledEntry]:
    rows = await conn.execute(
        select(_E.c.id, _E.c.user, _E.c.nonce, _E.c.total_fee, _E.c.trigger)
        .where(_E.c.batch_id == batch_id)
        .order_by(_E.c.id)
    )
    return [JournaledEntry(int(r[0]), str(r[1]), int(r[2]), int(r[3]), str(r[4])) for r in rows]


async def _settle_entry(
    conn: AsyncConnection, e: JournaledEntry, status: str, paid: int | None, unpaid: int
) -> int:
    """Mark an entry's requests settled and its claimed debts cleared; open a debt for ``unpaid``.

    Returns the fees of the recorded requests it covered.
    """
    now = utcnow()
    rows = (
        await conn.execute(
            select(_R.c.request_row_id, _R.c.fee).where(
                _R.c.entry_id == e.id, _R.c.request_row_id.is_not(None)
            )
        )
    ).all()
    row_ids = [int(r[0]) for r in rows]
    await repo.mark_settled(conn, row_ids, settlement_id=e.id, settlement_nonce=e.nonce)
    await conn.execute(update(_D).where(_D.c.claimed_by == e.id).values(cleared=True, cleared_at=now))
    if unpaid > 0:
        await conn.execute(
            insert(_D).values(
                user=e.user,
                source_entry_id=e.id,
                source_nonce=e.nonce,
                amount=unpaid,
                claimed_by=None,
                cleared=False,
                created_at=now,
            )
        )
    await conn.execute(
        update(_E).where(_E.c.id == e.id).values(status=status, paid=paid, unpaid=unpaid, settled_at=now)
    )
    return sum(int(r[1]) for r in rows)


async def _release_entry(conn: AsyncConnection, e: JournaledEntry, status: str) -> None:
    """Give an entry's claims back: its fees and debts become claimable again."""
    await conn.execute(delete(_C).where(_C.c.entry_id == e.id))
    await conn.execute(update(_D).where(_D.c.claimed_by == e.id).values(claimed_by=None))
    await conn.execute(
        update(_E).where(_E.c.id == e.id).values(status=status, paid=0, unpaid=0, settled_at=utcnow())
    )


async def _sync_debts(conn: AsyncConnection, users: Iterable[str]) -> None:
    """Copy each user's open debt total into the broker's user row (the balance guard reads it)."""
    for user in sorted(set(users)):
        amounts = await conn.execute(select(_D.c.amount).where(_D.c.user == user, _D.c.cleared.is_(False)))
        await repo.set_debt(conn, user, sum(int(a[0]) for a in amounts))


async def record_outcome(
    conn: AsyncConnection,
    batch_id: int,
    *,
    gas_used: int,
    block_number: int,
    results: Sequence[SettlementResult],
    tx_hash: str | None = None,
) -> list[EntryOutcome] | None:
    """Record a mined batch's per-entry results (in batch order); None if already recorded.

    ``tx_hash``: the candidate that was mined (the batch's newest one when not given).
    """
    closed = await _close(
        conn, batch_id, BatchState.DONE, mined=tx_hash, gas_used=gas_used, block_number=block_number
    )
    if not closed:
        return None
    entries = await _entries_of(conn, batch_id)
    if len(results) != len(entries):
        raise ValueError(f"batch {batch_id}: {len(entries)} entries but {len(results)} results")
    outcomes: list[EntryOutcome] = []
    for e, res in zip(entries, results, strict=True):
        if res.user.lower() != e.user:
            raise ValueError(f"batch {batch_id}: result for {res.user} where {e.user} was expected")
        status = _STATUS_NAMES[res.status]
        if res.status in (SettlementStatus.SUCCESS, SettlementStatus.PARTIAL):
            unpaid = res.unsettled
            covered = await _settle_entry(conn, e, status, e.total_fee - unpaid, unpaid)
            outcomes.append(
                EntryOutcome(
                    e.id, e.user, e.nonce, status, e.total_fee, e.total_fee - unpaid, unpaid, covered
                )
            )
        else:
            await _release_entry(conn, e, status)
            outcomes.append(EntryOutcome(e.id, e.user, e.nonce, status, e.total_fee, 0, 0))
    await _sync_debts(conn, (e.user for e in entries))
    return outcomes


async def release_batch(
    conn: AsyncConnection,
    batch_id: int,
    state: str,
    *,
    error: str,
    landed_entry_ids: Iterable[int] = (),
    tx_hash: str | None = None,
) -> list[EntryOutcome] | None:
    """Close a batch that settled nothing (``reverted``/``abandoned``); None if already closed.

    Entries in ``landed_entry_ids`` (their nonce is consumed on chain although no
    candidate's receipt shows it) are counted as settled, status ``unverified``.
    ``tx_hash``: the candidate that was mined and reverted, if any.
    """
    if not await _close(conn, batch_id, state, mined=tx_hash, error=error[:2000]):
        return None
    landed = set(landed_entry_ids)
    entry_status = EntryStatus.REVERTED if state == BatchState.REVERTED else EntryStatus.ABANDONED
    outcomes: list[EntryOutcome] = []
    entries = await _entries_of(conn, batch_id)
    for e in entries:
        if e.id in landed:
            covered = await _settle_entry(conn, e, EntryStatus.UNVERIFIED, None, 0)
            outcomes.append(
                EntryOutcome(
                    e.id, e.user, e.nonce, EntryStatus.UNVERIFIED, e.total_fee, e.total_fee, 0, covered
                )
            )
        else:
            await _release_entry(conn, e, entry_status)
            outcomes.append(EntryOutcome(e.id, e.user, e.nonce, entry_status, e.total_fee, 0, 0))
    await _sync_debts(conn, (e.user for e in entries))
    return outcomes


# -- reads of open batches ------------------------------------------------------------------


async def _candidates_of(conn: AsyncConnection, batch_id: int) -> list[Candidate]:
    rows = await conn.execute(
        select(_T.c.tx_hash, _T.c.raw_tx, _T.c.gas_price, _T.c.broadcast_at)
        .where(_T.c.batch_id == batch_id)
        .order_by(_T.c.id)
    )
    return [Candidate(str(r[0]), bytes(r[1]), int(r[2]), None if r[3] is None else float(r[3])) for r in rows]


async def open_batches(conn: AsyncConnection) -> list[OpenBatch]:
    """Batches journaled but not yet closed, oldest first, with their candidates."""
    rows = (
        await conn.execute(
            select(_B.c.id, _B.c.tx_nonce, _B.c.sends)
            .where(_B.c.state.in_(BatchState.OPEN))
            .order_by(_B.c.id)
        )
    ).all()
    return [
        OpenBatch(
            id=int(r[0]),
            tx_nonce=int(r[1]),
            sends=int(r[2]),
            entries=tuple(await _entries_of(conn, int(r[0]))),
            candidates=tuple(await _candidates_of(conn, int(r[0]))),
        )
        for r in rows
    ]
