"""Tables of the settlement journal, created by this package's Alembic revisions
(``zgserve.broker.settlement.migrations``, one of the broker's version locations).

* ``settlement_batches`` -- one ``settleFeesWithTEE`` call under one sender nonce.
  ``tx_hash``/``raw_tx``/``gas_price`` are those of its newest candidate while it
  is open, and of the candidate that was mined once it is closed.
* ``settlement_transactions`` -- every signed candidate of a batch: the first one and
  each replacement (same nonce and calldata, higher gas price). Each is written
  *before* it is broadcast; at most one of them can be mined.
* ``settlement_entries`` -- one signed ``TEESettlementData`` per user in a batch,
  with its outcome (status, paid, unpaid).
* ``settlement_receipts`` -- the receipts an entry commits to (its Merkle leaves),
  kept so that proofs can be served however the request table is pruned later.
* ``settlement_claims`` -- the fence: a (user, request id) belongs to at most one
  live entry. A failed or abandoned entry gives its claims back.
* ``settlement_debts`` -- the unpaid remainder of each PARTIAL entry, until a later
  entry (carrying a ``debt:<nonce>`` receipt) pays it.
* ``settlement_leases`` -- which broker process may settle right now.

Amounts use the broker's :class:`~zgserve.broker.db.models.Neuron` type
(``NUMERIC(78,0)``, text on SQLite); addresses are lower-case.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from zgserve.broker.db.models import Neuron, utcnow

_ID = BigInteger().with_variant(Integer(), "sqlite")


class SettlementBase(DeclarativeBase):
    pass


class BatchState:
    """Lifecycle of a batch; only ``SIGNED`` and ``SENT`` are open (reconciled on start)."""

    SIGNED = "signed"  # journaled, maybe not broadcast
    SENT = "sent"  # broadcast at least once
    DONE = "done"  # mined, outcomes recorded
    REVERTED = "reverted"  # mined with status 0; claims released
    ABANDONED = "abandoned"  # its sender nonce was used by another transaction; claims released

    OPEN = (SIGNED, SENT)


class EntryStatus:
    """Outcome of one entry: the contract's statuses, lower-case, plus our own states."""

    PENDING = "pending"
    SUCCESS = "success"
    PARTIAL = "partial"
    PROVIDER_MISMATCH = "provider_mismatch"
    NO_TEE_SIGNER = "no_tee_signer"
    INVALID_NONCE = "invalid_nonce"
    INVALID_SIGNATURE = "invalid_signature"
    REVERTED = "reverted"
    ABANDONED = "abandoned"
    # The chain shows the nonce consumed but the transaction's receipt is unavailable:
    # counted as settled (never settle a fee twice) and reported for an operator to check.
    UNVERIFIED = "unverified"

    SETTLED = (SUCCESS, PARTIAL, UNVERIFIED)


class BatchRow(SettlementBase):
    __tablename__ = "settlement_batches"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(42))
    state: Mapped[str] = mapped_column(String(16))
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    tx_nonce: Mapped[int] = mapped_column(BigInteger)
    raw_tx: Mapped[bytes] = mapped_column(LargeBinary)
    gas_limit: Mapped[int] = mapped_column(BigInteger)
    gas_price: Mapped[int] = mapped_column(Neuron)
    gas_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    holder: Mapped[str] = mapped_column(String(96))
    sends: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_settlement_batches_state", "state"),)


class TransactionRow(SettlementBase):
    """One signed candidate transaction of a batch (the first, or a replacement)."""

    __tablename__ = "settlement_transactions"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    raw_tx: Mapped[bytes] = mapped_column(LargeBinary)
    gas_price: Mapped[int] = mapped_column(Neuron)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Unix seconds of the first broadcast attempt (None: never tried); a replacement is due
    # ``replaceAfterSeconds`` after it. Compared numerically, like the lease's expiry.
    broadcast_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_settlement_transactions_batch", "batch_id"),)


class EntryRow(SettlementBase):
    __tablename__ = "settlement_entries"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    user: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[int] = mapped_column(Neuron)
    total_fee: Mapped[int] = mapped_column(Neuron)
    requests_hash: Mapped[str] = mapped_column(String(66))
    signature: Mapped[str] = mapped_column(String(132))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    paid: Mapped[int | None] = mapped_column(Neuron, nullable=True)
    unpaid: Mapped[int | None] = mapped_column(Neuron, nullable=True)
    receipt_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        UniqueConstraint("user", "nonce", name="uq_settlement_entries_user_nonce"),
        Index("ix_settlement_entries_batch", "batch_id"),
        Index("ix_settlement_entries_user_id", "user", "id"),
    )


class ReceiptRow(SettlementBase):
    __tablename__ = "settlement_receipts"

    entry_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(96))
    request_row_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    user: Mapped[str] = mapped_column(String(42))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    fee: Mapped[int] = mapped_column(Neuron)
    signature_id: Mapped[str] = mapped_column(String(128))

    __table_args__ = (Index("ix_settlement_receipts_request", "request_id"),)


class ClaimRow(SettlementBase):
    __tablename__ = "settlement_claims"

    user: Mapped[str] = mapped_column(String(42), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    entry_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_settlement_claims_entry", "entry_id"),)


class DebtRow(SettlementBase):
    __tablename__ = "settlement_debts"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(42))
    source_entry_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    source_nonce: Mapped[int] = mapped_column(Neuron)
    amount: Mapped[int] = mapped_column(Neuron)
    claimed_by: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cleared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_settlement_debts_user_cleared", "user", "cleared"),)


class LeaseRow(SettlementBase):
    __tablename__ = "settlement_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(96))
    expires_at: Mapped[float] = mapped_column(Float)  # unix seconds: compared numerically everywhere
    epoch: Mapped[int] = mapped_column(BigInteger)  # +1 on every change of holder (a fencing token)
