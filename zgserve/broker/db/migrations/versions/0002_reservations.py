"""Reservations of requests in flight, shared by every broker replica on one database.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from zgserve.broker.db.models import Neuron

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "broker_reservations",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(42), nullable=False),
        sa.Column("amount", Neuron(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_broker_reservations_user", "broker_reservations", ["user", "expires_at"])
    op.create_index("ix_broker_reservations_holder", "broker_reservations", ["holder"])
    # The newest settlement that covered a user's fees: the admission's "has anything been
    # settled since the balance was read" marker, one index lookup.
    op.create_index("ix_broker_requests_user_settlement", "broker_requests", ["user", "settlement_nonce"])


def downgrade() -> None:
    op.drop_index("ix_broker_requests_user_settlement", "broker_requests")
    op.drop_table("broker_reservations")
