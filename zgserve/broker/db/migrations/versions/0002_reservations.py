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

    if op.get_bind().dialect.name == "postgresql":
        op.execute(ADMIT_FUNCTION)


# One admission in one statement (one round trip): the per-user lock, the checks and the hold.
# Status: 0 admitted (hold id), 1 settled since the balance was read, 2 debt, 3 not enough.
ADMIT_FUNCTION = """
CREATE OR REPLACE FUNCTION zg_admit(p_user text, p_amount numeric, p_holder text,
    p_expires timestamptz, p_available numeric, p_marker numeric)
RETURNS TABLE(status int, hold_id bigint, owed numeric) AS $$
DECLARE m numeric; d numeric; u numeric; r numeric; i bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext(p_user));
  SELECT coalesce(max(settlement_nonce), -1) INTO m FROM broker_requests WHERE "user" = p_user;
  IF m <> p_marker THEN RETURN QUERY SELECT 1, NULL::bigint, m; RETURN; END IF;
  SELECT coalesce(max(debt), 0) INTO d FROM broker_users WHERE address = p_user;
  IF d > 0 THEN RETURN QUERY SELECT 2, NULL::bigint, d; RETURN; END IF;
  SELECT coalesce(sum(fee), 0) INTO u FROM broker_requests WHERE "user" = p_user AND NOT settled;
  SELECT coalesce(sum(amount), 0) INTO r FROM broker_reservations
    WHERE "user" = p_user AND expires_at > now();
  IF p_available - u - r < p_amount THEN
    RETURN QUERY SELECT 3, NULL::bigint, u + r; RETURN;
  END IF;
  INSERT INTO broker_reservations ("user", amount, holder, expires_at)
    VALUES (p_user, p_amount, p_holder, p_expires) RETURNING id INTO i;
  RETURN QUERY SELECT 0, i, u + r;
END $$ LANGUAGE plpgsql
"""


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS zg_admit")
    op.drop_index("ix_broker_requests_user_settlement", "broker_requests")
    op.drop_table("broker_reservations")
