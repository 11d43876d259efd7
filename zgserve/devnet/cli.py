"""``zgserve devnet``: start a local 0G network, print and write what was deployed.

Only typer is imported at module level so that ``zgserve --help`` stays fast; the chain
stack is imported when the command runs.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from zgserve.devnet.deployment import Deployment


def register(app: typer.Typer) -> None:
    """Add the ``devnet`` command to the root app."""
    app.command("devnet")(devnet)


def devnet(
    users: int = typer.Option(4, "--users", min=0, max=200, help="Funded user wallets besides the provider."),
    lock_time: int = typer.Option(3600, "--lock-time", min=3600, max=604_800, help="Refund lock time (s)."),
    port: int | None = typer.Option(None, "--port", help="RPC port (default: a free one)."),
    out: Path = typer.Option(Path("deployment.json"), "--out", help="Where to write the deployment file."),
    keep: bool = typer.Option(False, "--keep", help="Keep the network running until Ctrl-C."),
) -> None:
    """Start anvil, deploy the official 0G contracts behind proxies, fund wallets, write the file."""
    asyncio.run(_run(users=users, lock_time=lock_time, port=port, out=out, keep=keep))


async def _run(*, users: int, lock_time: int, port: int | None, out: Path, keep: bool) -> None:
    from rich.console import Console

    from zgserve.devnet.network import start_devnet

    console = Console()
    started = time.monotonic()

    def progress(step: str, seconds: float) -> None:
        console.print(f"  [green]✓[/] {step} [dim]({seconds:.2f} s)[/]")

    console.print("[bold]Starting the local 0G network[/] [dim](the first run also compiles the proxy)[/]")
    async with start_devnet(users=users, lock_time=lock_time, port=port, progress=progress) as devnet:
        deployment = devnet.deployment
        if keep:
            deployment = deployment.model_copy(update={"anvil_pid": devnet.anvil.pid})
        deployment.save(out)
        elapsed = time.monotonic() - started
        console.print(f"  [green]✓[/] deployment written to {out} [dim](ready in {elapsed:.2f} s)[/]")
        _print_deployment(console, deployment)
        if keep:
            console.print(f"[bold]Running at {deployment.rpc_url}[/] — press Ctrl-C to stop.")
            await _wait_for_stop()
    console.print("[bold]Network stopped.[/]" + ("" if keep else " (use --keep to keep it running)"))


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _print_deployment(console: Console, deployment: Deployment) -> None:
    from rich.table import Table

    from zgserve.common.money import fmt_og
    from zgserve.devnet.network import DEFAULT_FUNDING

    table = Table(
        title=f"0G devnet — chain {deployment.chain_id} at {deployment.rpc_url}", title_justify="left"
    )
    table.add_column("what", no_wrap=True)
    table.add_column("address", no_wrap=True, min_width=42)
    table.add_column("notes", style="dim")
    c = deployment.contracts
    table.add_row("LedgerManager", c.ledger, "ERC-1967 proxy")
    table.add_row("  implementation", c.ledger_implementation or "-", "official SDK bytecode")
    table.add_row(
        "InferenceServing", c.inference, f"{deployment.service_name}, lock {deployment.lock_time} s"
    )
    table.add_row("  implementation", c.inference_implementation or "-", "official SDK bytecode")
    if deployment.owner is not None:
        table.add_row("owner", deployment.owner.address, "contract owner")
    if deployment.provider is not None:
        table.add_row("provider", deployment.provider.address, fmt_og(DEFAULT_FUNDING))
    for i, user in enumerate(deployment.users):
        table.add_row(f"user {i}", user.address, fmt_og(DEFAULT_FUNDING))
    console.print(table)
    console.print("[dim]Development keys of these accounts are in the deployment file.[/]")
