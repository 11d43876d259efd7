"""Alembic environment: always run programmatically with a connection handed in by ``migrate``."""

from __future__ import annotations

from alembic import context

from zgserve.broker.db.models import Base

VERSION_TABLE = "broker_alembic_version"

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("broker migrations run through zgserve.broker.db.migrate(), which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
