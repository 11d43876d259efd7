"""Settlement journal: every candidate transaction of a batch (the first and its replacements).

Existing batches get their one transaction as their first candidate, never broadcast as far
as this table knows: an open one is re-broadcast before it can be replaced.

Revision ID: s0002
Revises: s0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from zgserve.broker.db.models import Neuron

revision = "s0002"
down_revision = "s0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "settlement_transactions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False, unique=True),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=False),
        sa.Column("gas_price", Neuron(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("broadcast_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_settlement_transactions_batch", "settlement_transactions", ["batch_id"])
    op.execute(
        "INSERT INTO settlement_transactions (batch_id, tx_hash, raw_tx, gas_price, created_at) "
        "SELECT id, tx_hash, raw_tx, gas_price, created_at FROM settlement_batches ORDER BY id"
    )


def downgrade() -> None:
    op.drop_table("settlement_transactions")
