"""Tables of the broker.

Money columns are ``NUMERIC(78,0)`` (any uint256) on PostgreSQL. SQLite's NUMERIC
affinity would turn values above 2**63 into floats, so there they are stored as
decimal text; both map to Python ``int``. Sums are taken by
:mod:`zgserve.broker.db.repo`, which knows the difference.

Addresses are stored lower-case (``0x`` + 40 hex) so that equality is plain string
equality; the API layer prints them checksummed.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Dialect, Index, Integer, Numeric, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine


class Neuron(TypeDecorator[int]):
    """An amount in neuron: ``NUMERIC(78,0)`` (text on SQLite), always ``int`` in Python."""

    impl = Numeric(78, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(78, 0, asdecimal=True))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"neuron amounts are int, got {type(value).__name__}")
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrement needs INTEGER PRIMARY KEY


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    """A user as the broker knows them: chain state last read (a cache) and any debt."""

    __tablename__ = "broker_users"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    balance: Mapped[int] = mapped_column(Neuron, default=0)
    pending_refund: Mapped[int] = mapped_column(Neuron, default=0)
    chain_nonce: Mapped[int] = mapped_column(Neuron, default=0)
    generation: Mapped[int] = mapped_column(Neuron, default=0)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Unpaid remainder of a PARTIAL settlement; the balance guard refuses a user while > 0.
    debt: Mapped[int] = mapped_column(Neuron, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RequestRow(Base):
    """One charged request: what was used, what it cost, and whether it has been settled."""

    __tablename__ = "broker_requests"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(42))
    model: Mapped[str] = mapped_column(String(256))
    endpoint: Mapped[str] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    input_price: Mapped[int] = mapped_column(Neuron)
    output_price: Mapped[int] = mapped_column(Neuron)
    fee: Mapped[int] = mapped_column(Neuron)
    # The response id: the key of the service's signature (GET /v1/proxy/signature/{id}).
    response_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # complete | disconnected (client left mid-stream) | estimated (no usage in the response)
    status: Mapped[str] = mapped_column(String(16), default="complete")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    settlement_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    settlement_nonce: Mapped[int | None] = mapped_column(Neuron, nullable=True)

    __table_args__ = (
        Index("ix_broker_requests_user_settled", "user", "settled", "id"),
        Index("ix_broker_requests_response_id", "response_id"),
        Index("ix_broker_requests_settlement_id", "settlement_id"),
        Index("ix_broker_requests_created_at", "created_at"),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class FeeRecord:
    """What the proxy hands to storage for one charged request (a row before insertion)."""

    request_id: str
    user: str
    model: str
    endpoint: str
    stream: bool
    input_tokens: int
    output_tokens: int
    input_price: int
    output_price: int
    fee: int
    response_id: str | None
    status: str
    created_at: datetime

    def as_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
