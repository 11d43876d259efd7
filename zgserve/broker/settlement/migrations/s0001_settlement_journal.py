"""Settlement journal: batches, entries, receipts, claims, debts, leases.

Revision ID: s0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from zgserve.broker.db.models import Neuron

revision = "s0001"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "settlement_batches",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(42), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False, unique=True),
        sa.Column("tx_nonce", sa.BigInteger(), nullable=False),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=False),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("gas_price", Neuron(), nullable=False),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("holder", sa.String(96), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ix_settlement_batches_state", "settlement_batches", ["state"])
    op.create_table(
        "settlement_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("user", sa.String(42), nullable=False),
        sa.Column("nonce", Neuron(), nullable=False),
        sa.Column("total_fee", Neuron(), nullable=False),
        sa.Column("requests_hash", sa.String(66), nullable=False),
        sa.Column("signature", sa.String(132), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("paid", Neuron(), nullable=True),
        sa.Column("unpaid", Neuron(), nullable=True),
        sa.Column("receipt_count", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("settled_at", _TS, nullable=True),
        sa.UniqueConstraint("user", "nonce", name="uq_settlement_entries_user_nonce"),
    )
    op.create_index("ix_settlement_entries_batch", "settlement_entries", ["batch_id"])
    op.create_index("ix_settlement_entries_user_id", "settlement_entries", ["user", "id"])
    op.create_table(
        "settlement_receipts",
        sa.Column("entry_id", sa.BigInteger(), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("request_id", sa.String(96), nullable=False),
        sa.Column("request_row_id", sa.BigInteger(), nullable=True),
        sa.Column("user", sa.String(42), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("fee", Neuron(), nullable=False),
        sa.Column("signature_id", sa.String(128), nullable=False),
    )
    op.create_index("ix_settlement_receipts_request", "settlement_receipts", ["request_id"])
    op.create_table(
        "settlement_claims",
        sa.Column("user", sa.String(42), primary_key=True),
        sa.Column("request_id", sa.String(96), primary_key=True),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_settlement_claims_entry", "settlement_claims", ["entry_id"])
    op.create_table(
        "settlement_debts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(42), nullable=False),
        sa.Column("source_entry_id", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("source_nonce", Neuron(), nullable=False),
        sa.Column("amount", Neuron(), nullable=False),
        sa.Column("claimed_by", sa.BigInteger(), nullable=True),
        sa.Column("cleared", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("cleared_at", _TS, nullable=True),
    )
    op.create_index("ix_settlement_debts_user_cleared", "settlement_debts", ["user", "cleared"])
    op.create_table(
        "settlement_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(96), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "settlement_leases",
        "settlement_debts",
        "settlement_claims",
        "settlement_receipts",
        "settlement_entries",
        "settlement_batches",
    ):
        op.drop_table(table)
