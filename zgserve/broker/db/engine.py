"""Engine creation (SQLite in WAL mode, or PostgreSQL) and programmatic migrations."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from zgserve.common.errors import ConfigError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every broker process on one database.
_PG_MIGRATION_LOCK = 0x7A67_6272  # "zgbr"


def create_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5) -> AsyncEngine:
    """An async engine for ``url``: ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``.

    SQLite gets WAL journaling, a busy timeout, and ``synchronous`` as configured
    (FULL by default: a committed record survives power loss, not only a crash).
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"database.url is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.drivername != "sqlite+aiosqlite":
            raise ConfigError("database.url: use the async driver, sqlite+aiosqlite:///path")
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif backend == "postgresql":
        if parsed.drivername != "postgresql+asyncpg":
            raise ConfigError("database.url: use the async driver, postgresql+asyncpg://...")
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    else:
        raise ConfigError(f"database.url: unsupported database {backend!r} (sqlite or postgresql)")
    engine = create_async_engine(parsed, **kwargs)
    if backend == "sqlite":
        _sqlite_pragmas(engine, sqlite_synchronous)
    return engine


def _sqlite_pragmas(engine: AsyncEngine, synchronous: str) -> None:
    if synchronous not in ("FULL", "NORMAL"):
        raise ConfigError(f"database.sqliteSynchronous must be FULL or NORMAL, not {synchronous!r}")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()


# Packages that add their own revisions to the broker's database (one version table, several
# version locations): the settlement engine's journal. Listed here so that every start-up
# knows every revision a database may carry.
EXTENSION_MIGRATIONS = ("zgserve.broker.settlement.migrations",)


def version_locations() -> list[Path]:
    """The broker's revisions and those of installed extensions."""
    locations = [MIGRATIONS / "versions"]
    for package in EXTENSION_MIGRATIONS:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        if spec is not None and spec.submodule_search_locations:
            locations.extend(Path(p) for p in spec.submodule_search_locations)
    return locations


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in version_locations()))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "heads")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; safe to call from several processes at once."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent start-ups; released at the end of this transaction.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        await conn.run_sync(_upgrade)
    logger.info("broker database schema is up to date")
