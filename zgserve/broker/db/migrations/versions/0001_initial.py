"""Users (cached chain state, debt) and charged requests.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from zgserve.broker.db.models import Neuron

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "broker_users",
        sa.Column("address", sa.String(42), primary_key=True),
        sa.Column("balance", Neuron(), nullable=False),
        sa.Column("pending_refund", Neuron(), nullable=False),
        sa.Column("chain_nonce", Neuron(), nullable=False),
        sa.Column("generation", Neuron(), nullable=False),
        sa.Column("acknowledged", sa.Boolean(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("debt", Neuron(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "broker_requests",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("user", sa.String(42), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("input_price", Neuron(), nullable=False),
        sa.Column("output_price", Neuron(), nullable=False),
        sa.Column("fee", Neuron(), nullable=False),
        sa.Column("response_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("settlement_id", sa.BigInteger(), nullable=True),
        sa.Column("settlement_nonce", Neuron(), nullable=True),
    )
    op.create_index("ix_broker_requests_user_settled", "broker_requests", ["user", "settled", "id"])
    op.create_index("ix_broker_requests_response_id", "broker_requests", ["response_id"])
    op.create_index("ix_broker_requests_settlement_id", "broker_requests", ["settlement_id"])
    op.create_index("ix_broker_requests_created_at", "broker_requests", ["created_at"])


def downgrade() -> None:
    op.drop_table("broker_requests")
    op.drop_table("broker_users")
