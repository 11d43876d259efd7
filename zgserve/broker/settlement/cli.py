"""``zgserve settle``: the operator's view of, and hand on, settlement.

Every command reads the broker's configuration file (same database, wallet and
settlement signer as the broker) and may run beside a running broker: the lease
decides who sends, the journal keeps both consistent.

* ``zgserve settle now [--user ADDR]...`` -- settle now (everyone with fees, or
  the given users), deadlines or not; prints the round's report.
* ``zgserve settle run [--once]`` -- the settlement loop as its own process.
* ``zgserve settle status`` -- backlog per user, open transactions and debts (no chain).
* ``zgserve settle history [--user ADDR]`` -- recent settlements.

``--option key=value`` (repeatable) overrides a ``settlement:`` key for this run,
e.g. ``-o intervalSeconds=5 -o gasPriceCap=2000000000``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
import yaml

from zgserve.common.errors import ConfigError

settle_app = typer.Typer(name="settle", help="Settle recorded fees on-chain; inspect the settlement journal.")

CONFIG = typer.Option(..., "--config", "-c", help="The broker's YAML configuration.")
OPTIONS = typer.Option([], "--option", "-o", help="Override a settlement key: camelCaseKey=value.")


def register(app: typer.Typer) -> None:
    """Add ``zgserve settle ...`` to the main command."""
    app.add_typer(settle_app, name="settle")


def _load(config: Path, options: list[str]) -> tuple[Any, Any]:
    from zgserve.broker.settings import load_settings
    from zgserve.broker.settlement.config import SettlementConfig

    try:
        settings = load_settings(config)
        base = SettlementConfig.from_settings(settings.settlement).model_dump(by_alias=True)
        for item in options:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--option {item!r}: expected key=value")
            base[key.strip()] = yaml.safe_load(value)
        return settings, SettlementConfig.from_settings(base)
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@settle_app.command("now")
def now(
    config: Path = CONFIG,
    user: list[str] = typer.Option([], "--user", "-u", help="Only these users (repeatable)."),
    wait: float = typer.Option(
        0.0, "--wait", help="Seconds to wait for the lease if another process holds it."
    ),
    option: list[str] = OPTIONS,
) -> None:
    """Settle now: every user with fees, or only ``--user``; prints what happened."""
    from zgserve.broker.settlement.wiring import standalone_engine

    settings, cfg = _load(config, option)

    async def main() -> dict[str, Any]:
        async with standalone_engine(settings, cfg) as engine:
            deadline = time.monotonic() + wait
            while True:
                report = await engine.settle(user or None)
                if report["leader"] or time.monotonic() >= deadline:
                    return report
                await asyncio.sleep(0.25)

    report = asyncio.run(main())
    _echo(report)
    if not report.get("leader", True):
        typer.echo("another process holds the settlement lease; nothing was done", err=True)
        raise typer.Exit(3)


@settle_app.command("run")
def run(
    config: Path = CONFIG,
    once: bool = typer.Option(False, "--once", help="One policy round, then exit."),
    option: list[str] = OPTIONS,
) -> None:
    """Run the settlement loop in this process until SIGINT/SIGTERM."""
    from zgserve.broker.settlement.wiring import standalone_engine

    settings, cfg = _load(config, [*option, "enabled=true"])

    async def main() -> None:
        async with standalone_engine(settings, cfg) as engine:
            if once:
                _echo((await engine.run_round()).to_json())
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await engine.start()
            logging.getLogger(__name__).info("settlement loop running; SIGTERM stops it")
            await stop.wait()
            await engine.stop()

    asyncio.run(main())


@settle_app.command("status")
def status(config: Path = CONFIG) -> None:
    """Unsettled fees per user, open transactions and debts, from the database alone."""
    from zgserve.broker.db import create_engine
    from zgserve.broker.settlement import journal, queries

    settings, _ = _load(config, [])

    async def main() -> dict[str, Any]:
        db = create_engine(settings.database.url)
        try:
            await journal.ensure_schema(db)
            async with db.connect() as conn:
                claimable = await queries.claimable_users(conn)
                batches = await journal.open_batches(conn)
                debt_users, debt_total = await queries.open_debt_total(conn)
        finally:
            await db.dispose()
        now_ = datetime.now(UTC)
        return {
            "unsettled": {
                u: {
                    "fee": str(c.unsettled),
                    "oldestAgeSeconds": None
                    if c.oldest_at is None
                    else int((now_ - c.oldest_at).total_seconds()),
                    "debt": str(c.debt),
                }
                for u, c in sorted(claimable.items())
            },
            "openTransactions": [
                {
                    "txHash": b.tx_hash,
                    "nonce": b.tx_nonce,
                    "entries": len(b.entries),
                    "replaces": b.tx_hashes[:-1],  # earlier candidates; any one may still be mined
                }
                for b in batches
            ],
            "openDebt": {"users": debt_users, "total": str(debt_total)},
        }

    _echo(asyncio.run(main()))


@settle_app.command("history")
def history(
    config: Path = CONFIG,
    user: str | None = typer.Option(None, "--user", "-u"),
    limit: int = typer.Option(20, "--limit", "-n"),
) -> None:
    """The most recent settlement entries (newest first)."""
    from zgserve.broker.db import create_engine
    from zgserve.broker.settlement import journal, queries
    from zgserve.broker.settlement.routes import settlement_json

    settings, _ = _load(config, [])

    async def main() -> list[dict[str, Any]]:
        db = create_engine(settings.database.url)
        try:
            await journal.ensure_schema(db)
            async with db.connect() as conn:
                items, _ = await queries.history(conn, user=user, limit=limit)
        finally:
            await db.dispose()
        provider = _provider_address(settings)
        return [settlement_json(r, provider=provider) for r in items]

    _echo(asyncio.run(main()))


def _provider_address(settings: Any) -> str:
    from zgserve.common.signing import Signer

    return Signer.from_hex(settings.provider_key()).address
