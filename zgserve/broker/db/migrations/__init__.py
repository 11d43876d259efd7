"""Alembic migrations of the broker database (applied by :func:`zgserve.broker.db.engine.migrate`)."""
