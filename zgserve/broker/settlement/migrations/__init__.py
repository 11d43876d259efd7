"""Alembic revisions of the settlement journal, chained after the broker's own revisions."""
