"""Each user's unsettled total kept as one row, so that admission reads it in one lookup;
holds released without waiting for the disk.

Summing a user's unsettled records on every admission cost time in proportion to their
count: thousands of small fees waiting for a settlement made every request of that user
slower. On PostgreSQL, ``broker_unsettled`` holds the sum per user, maintained in the same
transaction as the records by statement-level triggers (one row lock per user and
statement, taken in address order, as settlements order their entries, so writers and
settlers do not deadlock), and ``zg_admit`` reads it. SQLite (one process, the in-process
guard) does not need it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import importlib

from alembic import op

# The admission function as revision 0002 created it (a module name Python cannot import by name).
_0002_admit = importlib.import_module("zgserve.broker.db.migrations.versions.0002_reservations")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLE = """
CREATE TABLE broker_unsettled (
  "user" varchar(42) PRIMARY KEY,
  fee numeric(78, 0) NOT NULL
)
"""
_FILL = """
INSERT INTO broker_unsettled ("user", fee)
  SELECT "user", sum(fee) FROM broker_requests WHERE NOT settled GROUP BY "user"
"""
# The change of each user's unsettled total in one statement, added in address order.
_APPLY = """
  INSERT INTO broker_unsettled ("user", fee)
    SELECT u, sum(d) FROM ({rows}) AS change(u, d) GROUP BY u HAVING sum(d) <> 0 ORDER BY u
  ON CONFLICT ("user") DO UPDATE SET fee = broker_unsettled.fee + EXCLUDED.fee;
  RETURN NULL;
"""
_NEW = 'SELECT "user", CASE WHEN settled THEN 0 ELSE fee END FROM new_rows'
_OLD = 'SELECT "user", -(CASE WHEN settled THEN 0 ELSE fee END) FROM old_rows'
_TRIGGERS = {
    "insert": ("NEW TABLE AS new_rows", _NEW),
    "update": ("OLD TABLE AS old_rows NEW TABLE AS new_rows", f"{_NEW} UNION ALL {_OLD}"),
    "delete": ("OLD TABLE AS old_rows", _OLD),
}

ADMIT_FUNCTION = _0002_admit.ADMIT_FUNCTION.replace(
    'SELECT coalesce(sum(fee), 0) INTO u FROM broker_requests WHERE "user" = p_user AND NOT settled;',
    'SELECT coalesce(max(fee), 0) INTO u FROM broker_unsettled WHERE "user" = p_user;',
)
assert ADMIT_FUNCTION != _0002_admit.ADMIT_FUNCTION

# Dropping holds without waiting for the disk: a release lost in a database crash only keeps a
# hold until it expires (admission stricter, never looser), and it saves a WAL flush per request.
RELEASE_FUNCTION = """
CREATE OR REPLACE FUNCTION zg_release(p_ids bigint[]) RETURNS void AS $$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  DELETE FROM broker_reservations WHERE id = ANY(p_ids);
END $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_TABLE)
    op.execute("LOCK TABLE broker_requests IN SHARE ROW EXCLUSIVE MODE")  # no record slips past
    op.execute(_FILL)
    for event, (tables, rows) in _TRIGGERS.items():
        op.execute(
            f"CREATE FUNCTION zg_unsettled_{event}() RETURNS trigger AS $$ BEGIN"
            f"{_APPLY.format(rows=rows)} END $$ LANGUAGE plpgsql"
        )
        op.execute(
            f"CREATE TRIGGER zg_unsettled_{event} AFTER {event.upper()} ON broker_requests"
            f" REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION zg_unsettled_{event}()"
        )
    op.execute(ADMIT_FUNCTION)
    op.execute(RELEASE_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_0002_admit.ADMIT_FUNCTION)
    op.execute("DROP FUNCTION IF EXISTS zg_release(bigint[])")
    for event in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS zg_unsettled_{event} ON broker_requests")
        op.execute(f"DROP FUNCTION IF EXISTS zg_unsettled_{event}()")
    op.execute("DROP TABLE IF EXISTS broker_unsettled")
