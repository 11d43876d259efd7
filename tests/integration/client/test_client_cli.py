"""``zgserve user ...`` against a devnet, through typer's runner (each command opens its own client)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from zgserve.broker.auth import TokenVerifier
from zgserve.chain import ChainClient
from zgserve.client.cli import parse_amount, register
from zgserve.common.money import OG
from zgserve.devnet.testing import NewAccount, RegisterProvider


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        pass

    register(app)
    return app


async def _invoke(deployment_file: Path, key: str, *args: str) -> Result:
    argv = ["user", "--deployment", str(deployment_file), "--key", key, *args]
    # The command runs its own event loop (asyncio.run), so it runs in a worker thread.
    return await asyncio.to_thread(CliRunner().invoke, _app(), argv, catch_exceptions=False)


def test_parse_amount() -> None:
    assert parse_amount("3") == 3 * OG
    assert parse_amount("0.5") == OG // 2
    assert parse_amount("1.5 0G") == 3 * OG // 2
    assert parse_amount("12neuron") == 12


async def test_user_commands(
    chain: ChainClient, deployment_file: Path, new_account: NewAccount, register_provider: RegisterProvider
) -> None:
    provider = (await register_provider()).address
    account = await new_account()
    key = account.private_key

    async def run(*args: str, code: int = 0) -> str:
        result = await _invoke(deployment_file, key, *args)
        assert result.exit_code == code, result.output
        return result.output

    assert "no ledger yet" in await run("ledger")
    assert "error:" in await run("deposit", "1", code=1)  # below the 3 0G minimum: one clean line
    await run("deposit", "6")
    await run("transfer", provider, "2")
    await run("acknowledge", provider)
    shown = await run("ledger")
    assert "4 0G available of 6 0G" in shown
    assert provider in shown
    assert provider in await run("providers")

    api_key = (await run("api-key", "create", provider)).strip().splitlines()[-1]
    assert api_key.startswith("app-sk-")
    assert TokenVerifier(provider).bearer("Bearer " + api_key).token_id == 0
    await run("api-key", "revoke", provider, "0")
    onchain = await chain.inference().get_account(account.address, provider)
    assert onchain.revoked_bitmap == 1

    headers = json.loads((await run("headers", provider)).strip().splitlines()[-1])
    assert TokenVerifier(provider).bearer(headers["Authorization"]).ephemeral
    legacy = json.loads((await run("headers", provider, "--legacy")).strip().splitlines()[-1])
    assert set(legacy) == {"Address", "Session-Token", "Session-Signature"}

    await run("api-key", "revoke-all", provider)
    await run("refund")
    await run("withdraw", "1")
    onchain = await chain.inference().get_account(account.address, provider)
    assert (onchain.generation, onchain.pending_refund) == (1, 2 * OG)
    ledger = await chain.ledger().get_ledger(account.address)
    assert (ledger.available_balance, ledger.total_balance) == (3 * OG, 5 * OG)
