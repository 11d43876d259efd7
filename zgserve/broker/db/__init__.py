"""Broker storage: SQLAlchemy 2 models, Alembic migrations shipped in the package, repositories."""

from zgserve.broker.db.engine import create_engine, migrate
from zgserve.broker.db.models import Base, FeeRecord, RequestRow, UserRow

__all__ = ["Base", "FeeRecord", "RequestRow", "UserRow", "create_engine", "migrate"]
