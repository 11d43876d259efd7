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
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
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
    event.listen(engine.sync_engine, "handle_error", _wrap_socket_errors)
    if backend == "sqlite":
        _sqlite_pragmas(engine, sqlite_synchronous)
    else:
        event.listen(engine.sync_engine, "do_connect", _connect_or_driver_error)
    return engine


def _connect_or_driver_error(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect; a refused or timed-out connection becomes the driver's OperationalError.

    SQLAlchemy wraps only the driver's own exception types raised while connecting, and asyncpg
    raises a plain ``OSError`` when the server is down: without this, ``except SQLAlchemyError``
    misses exactly the outage it is there for.
    """
    try:
        return dialect.connect(*cargs, **cparams)
    except (OSError, TimeoutError) as exc:
        raise dialect.loaded_dbapi.OperationalError(f"cannot connect to the database: {exc}", exc) from exc


def _wrap_socket_errors(ctx: ExceptionContext) -> OperationalError | None:
    """A socket error in the middle of a statement as SQLAlchemy's OperationalError (a disconnect).

    The driver lets a plain ``OSError`` (connection reset by a restarting server) through, and
    SQLAlchemy passes errors that are not the driver's on unwrapped.
    """
    if ctx.sqlalchemy_exception is not None or not isinstance(ctx.original_exception, OSError | TimeoutError):
        return None
    ctx.is_disconnect = True  # the pool drops the connection instead of handing it out again
    return OperationalError(None, None, ctx.original_exception, connection_invalidated=True)


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
