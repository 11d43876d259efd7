"""``zgserve user ...``: the user side of the 0G Compute Network from a shell.

Needs an RPC URL (``testnet`` and ``mainnet`` are accepted as names; their contract
addresses default to the SDK's) or a deployment file written by ``zgserve devnet``,
and a private key (``--key``, ``ZG_PRIVATE_KEY``, or a prompt). Amounts are in 0G
(decimals allowed) unless suffixed with ``neuron``.

Only typer is imported at module level so that ``zgserve --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from zgserve.client.user import UserClient
    from zgserve.client.verify import Verification

T = TypeVar("T")

user_app = typer.Typer(
    help="Use 0G providers: fund a ledger, pay providers, chat, verify answers, get refunds.",
    no_args_is_help=True,
)
api_key_app = typer.Typer(help="Persistent API keys (app-sk-...) for a provider.", no_args_is_help=True)
user_app.add_typer(api_key_app, name="api-key")


def register(app: typer.Typer) -> None:
    """Add the ``user`` command group to the root app."""
    app.add_typer(user_app, name="user")


@dataclass(frozen=True)
class _Options:
    rpc_url: str | None
    chain_id: int | None
    ledger: str | None
    inference: str | None
    deployment: Path | None
    key: str | None
    dev_user: int | None


@user_app.callback()
def _options(
    ctx: typer.Context,
    rpc_url: str | None = typer.Option(
        None, "--rpc-url", envvar="ZG_RPC_URL", help="JSON-RPC URL, or 'testnet' / 'mainnet'."
    ),
    chain_id: int | None = typer.Option(None, "--chain-id", help="Default: read from the RPC."),
    ledger: str | None = typer.Option(None, "--ledger", envvar="ZG_LEDGER_ADDRESS", help="LedgerManager."),
    inference: str | None = typer.Option(
        None, "--inference", envvar="ZG_INFERENCE_ADDRESS", help="InferenceServing."
    ),
    deployment: Path | None = typer.Option(
        None, "--deployment", "-d", envvar="ZG_DEPLOYMENT", help="Deployment file (zgserve devnet)."
    ),
    key: str | None = typer.Option(
        None, "--key", envvar="ZG_PRIVATE_KEY", help="The user's private key (hex); prompted if absent."
    ),
    dev_user: int | None = typer.Option(
        None, "--dev-user", help="Use the deployment file's test user number N (devnet only)."
    ),
) -> None:
    ctx.obj = _Options(rpc_url, chain_id, ledger, inference, deployment, key, dev_user)


def parse_amount(text: str) -> int:
    """``"1.5"`` (0G) or ``"1000neuron"`` → neuron."""
    from zgserve.common import money

    value = text.strip().lower()
    try:
        if value.endswith("neuron"):
            return money.parse(value.removesuffix("neuron").strip())
        amount = money.og(value.removesuffix("0g").strip())
    except (ValueError, ArithmeticError) as exc:
        raise typer.BadParameter(f"{text!r} is not an amount (0G, or an integer with 'neuron')") from exc
    if amount < 0:
        raise typer.BadParameter("amounts are not negative")
    return amount


def _private_key(opts: _Options) -> str:
    if opts.key:
        return opts.key
    if opts.dev_user is not None:
        from zgserve.devnet.deployment import Deployment

        if opts.deployment is None:
            raise typer.BadParameter("--dev-user needs --deployment")
        users = Deployment.load(opts.deployment).users
        if not 0 <= opts.dev_user < len(users):
            raise typer.BadParameter(f"the deployment has {len(users)} test users")
        return users[opts.dev_user].private_key
    return str(typer.prompt("Private key", hide_input=True))


def _run(ctx: typer.Context, action: Callable[[UserClient], Awaitable[T]]) -> T:
    """Open a :class:`UserClient` for the options, run ``action``, report errors in one line."""
    from rich.console import Console

    from zgserve.client.network import resolve_network
    from zgserve.client.user import UserClient
    from zgserve.common.errors import ZgError

    opts: _Options = ctx.obj

    async def main() -> T:
        network = await resolve_network(
            rpc_url=opts.rpc_url,
            chain_id=opts.chain_id,
            ledger=opts.ledger,
            inference=opts.inference,
            deployment=opts.deployment,
        )
        async with await UserClient.connect(network, _private_key(opts)) as user:
            return await action(user)

    try:
        return asyncio.run(main())
    except ZgError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from exc


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _table(*columns: str) -> Any:
    """A table whose first column is a provider address, never cut."""
    from rich.table import Table

    table = Table()
    table.add_column("provider", no_wrap=True, min_width=42)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _per_million(price: int) -> str:
    """A neuron-per-token price as 0G per million tokens."""
    from zgserve.common.money import fmt_og

    return fmt_og(price * 1_000_000).removesuffix(" 0G")


def _tx(label: str, receipt: Any) -> None:
    _console().print(f"[green]✓[/] {label} [dim](tx {receipt.tx_hash}, gas {receipt.gas_used})[/]")


# -- ledger and accounts --------------------------------------------------------------------


@user_app.command("ledger")
def ledger_cmd(ctx: typer.Context) -> None:
    """Show the wallet, the ledger and the accounts with providers."""
    from zgserve.common.money import fmt_og

    async def action(user: UserClient) -> None:
        console = _console()
        console.print(f"wallet {user.address}: {fmt_og(await user.wallet_balance())}")
        ledger = await user.get_ledger()
        if ledger is None:
            console.print("no ledger yet: [bold]zgserve user deposit 3[/] creates one (3 0G minimum)")
            return
        console.print(
            f"ledger: {fmt_og(ledger.available_balance)} available of {fmt_og(ledger.total_balance)}"
        )
        table = _table("balance", "pending refund", "ack", "gen", "revoked keys")
        for account in await user.accounts():
            revoked = [str(i) for i in range(255) if account.is_token_revoked(i)]
            table.add_row(
                account.provider,
                fmt_og(account.balance),
                fmt_og(account.pending_refund),
                "yes" if account.acknowledged else "no",
                str(account.generation),
                ",".join(revoked) or "-",
            )
        console.print(table)

    _run(ctx, action)


@user_app.command("deposit")
def deposit_cmd(ctx: typer.Context, amount: str = typer.Argument(..., help="0G to add.")) -> None:
    """Add funds to the ledger (creates it; the first deposit is at least 3 0G)."""
    value = parse_amount(amount)

    async def action(user: UserClient) -> None:
        _tx(f"deposited {amount} 0G", await user.deposit(value))

    _run(ctx, action)


@user_app.command("withdraw")
def withdraw_cmd(ctx: typer.Context, amount: str = typer.Argument(..., help="0G to withdraw.")) -> None:
    """Move available ledger funds back to the wallet (the ledger's refund)."""
    value = parse_amount(amount)

    async def action(user: UserClient) -> None:
        _tx(f"withdrew {amount} 0G to the wallet", await user.withdraw(value))

    _run(ctx, action)


@user_app.command("transfer")
def transfer_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    amount: str = typer.Argument(..., help="0G to move to the provider's account (1 0G minimum at first)."),
) -> None:
    """Fund an account with a provider from the ledger."""
    value = parse_amount(amount)

    async def action(user: UserClient) -> None:
        _tx(f"transferred {amount} 0G to {provider}", await user.transfer(provider, value))

    _run(ctx, action)


@user_app.command("acknowledge")
def acknowledge_cmd(
    ctx: typer.Context, provider: str = typer.Argument(..., help="Provider address.")
) -> None:
    """Acknowledge a provider's TEE signer (creates the account with 1 0G if needed)."""

    async def action(user: UserClient) -> None:
        account = await user.acknowledge(provider)
        _console().print(f"[green]✓[/] {provider} acknowledged (account generation {account.generation})")

    _run(ctx, action)


@user_app.command("refund")
def refund_cmd(
    ctx: typer.Context,
    providers: list[str] | None = typer.Argument(None, help="Providers (default: every account)."),
) -> None:
    """Request refunds from provider accounts (retrieveFund); matured ones return to the ledger."""

    async def action(user: UserClient) -> None:
        lock = await user.inference.lock_time()
        for receipt in await user.request_refund(providers):
            _tx("refund requested", receipt)
        _console().print(f"requested refunds unlock after {lock} s; run this again then to collect them")

    _run(ctx, action)


@user_app.command("providers")
def providers_cmd(
    ctx: typer.Context,
    show_all: bool = typer.Option(False, "--all", help="Include services whose signer is not acknowledged."),
) -> None:
    """List providers' services (their signers acknowledged by the contract owner, unless --all)."""

    async def action(user: UserClient) -> None:
        table = _table("model", "url", "0G per 1M in / out", "verifiability", "signer ack")
        for s in await user.list_providers(include_unacknowledged=show_all):
            prices = f"{_per_million(s.input_price)} / {_per_million(s.output_price)}"
            table.add_row(
                s.provider,
                s.model,
                s.url,
                prices,
                s.verifiability,
                "yes" if s.tee_signer_acknowledged else "no",
            )
        _console().print(table)

    _run(ctx, action)


# -- tokens ---------------------------------------------------------------------------------


@user_app.command("headers")
def headers_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    legacy: bool = typer.Option(False, help="The Address / Session-Token / Session-Signature form."),
) -> None:
    """Print request headers with a fresh 24-hour session token (JSON)."""

    async def action(user: UserClient) -> None:
        headers = await (user.legacy_headers(provider) if legacy else user.session_headers(provider))
        typer.echo(json.dumps(headers))

    _run(ctx, action)


@api_key_app.command("create")
def api_key_create_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    token_id: int | None = typer.Option(None, "--token-id", min=0, max=254, help="Default: lowest free id."),
    expires_in: int = typer.Option(0, "--expires-in", min=0, help="Seconds; 0 = never expires."),
) -> None:
    """Create a persistent API key; prints the app-sk-... secret."""

    from rich.console import Console

    async def action(user: UserClient) -> None:
        key = await user.create_api_key(provider, token_id=token_id, expires_in_ms=expires_in * 1000)
        note = Console(stderr=True, highlight=False)
        note.print(f"API key id {key.token.token_id} for {provider} (revoke: zgserve user api-key revoke)")
        typer.echo(key.api_key())

    _run(ctx, action)


@api_key_app.command("revoke")
def api_key_revoke_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    token_id: int = typer.Argument(..., min=0, max=254, help="The key's id."),
) -> None:
    """Revoke one API key on chain."""

    async def action(user: UserClient) -> None:
        _tx(f"API key {token_id} revoked", await user.revoke_api_key(provider, token_id))

    _run(ctx, action)


@api_key_app.command("revoke-all")
def api_key_revoke_all_cmd(ctx: typer.Context, provider: str = typer.Argument(..., help="Provider.")) -> None:
    """Revoke every key and session token for a provider (bumps the account's generation)."""

    async def action(user: UserClient) -> None:
        _tx("all tokens revoked", await user.revoke_all_tokens(provider))

    _run(ctx, action)


# -- chat and verification -------------------------------------------------------------------


def _finish(result: Verification) -> None:
    _console().print(result.render())
    raise typer.Exit(0 if result.verified else 1 if result.failed else 3)


@user_app.command("chat")
def chat_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    message: str = typer.Argument(..., help="The user message."),
    model: str | None = typer.Option(None, "--model", help="Default: the service's model."),
    stream: bool = typer.Option(False, "--stream", help="Stream the answer."),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1),
    fund: bool = typer.Option(True, "--fund/--no-fund", help="Top the account up first, as the SDK does."),
    history: Path | None = typer.Option(
        None, "--history", help="Keep the exchange here for `zgserve user audit` (default: the data dir)."
    ),
    no_history: bool = typer.Option(False, "--no-history", help="Do not keep the exchange."),
) -> None:
    """Send one chat through the provider, verify its signature and content, keep it for an audit."""
    from zgserve.client.chat import chat

    async def action(user: UserClient) -> Verification:
        kept = None if no_history else _history_path(user, provider, history)
        return await chat(user, provider, message, model, stream, max_tokens, fund, history=kept)

    _finish(_run(ctx, action))


def _history_path(user: UserClient, provider: str, given: Path | None) -> Path:
    from zgserve.client.history import default_path

    if given is not None:
        return given
    try:
        return default_path(user.address, provider)
    except ValueError as exc:
        raise typer.BadParameter(f"{provider!r} is not an address") from exc


@user_app.command("audit")
def audit_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    history: Path | None = typer.Option(
        None, "--history", help="The answers kept by `zgserve user chat` (default: the data dir)."
    ),
) -> None:
    """Audit the provider's settlements: receipts, Merkle proofs, each charge against a kept answer.

    Exits 0 when everything verified, 1 when a check failed, 3 when nothing failed but
    some receipts could not be matched because the answer was not kept.
    """
    from zgserve.client.chat import audit

    async def action(user: UserClient) -> int:
        result = await audit(user, provider, _history_path(user, provider, history))
        return 1 if result.failed else 0 if result.ok else 3

    raise typer.Exit(_run(ctx, action))


@user_app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    provider: str = typer.Argument(..., help="Provider address."),
    offline: bool = typer.Option(False, "--offline", help="Do not contact NVIDIA's attestation service."),
) -> None:
    """Verify a provider: its quote binds the on-chain signer; a fresh attestation report."""
    from zgserve.client.chat import verify_provider

    _finish(_run(ctx, lambda user: verify_provider(user, provider, online=not offline)))
