"""The whole user journey with the Python client, against real servers on the devnet.

verifiable service (simulated TEE) -> broker (registered on-chain, owner-acknowledged,
settlement engine) <- a user with :class:`UserClient` and the ``openai`` package:
fund a ledger, list providers, acknowledge, one non-streamed and one streamed chat,
verify both signatures against the exact bytes and the content against what the
``openai`` package returned, request a refund; then the provider settles, the chain
shows exactly the recorded fees moved from the user to the provider, and the user's
audit of the settlement (receipts, Merkle proofs, signatures) against the answers it
kept passes.

Runs twice: on the small fake backend, and (marker ``llama``) on the embedded
llama.cpp server with SmolLM2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import typer
from typer.testing import CliRunner

from tests.e2e import stack
from tests.e2e.stack import INPUT_PRICE, OUTPUT_PRICE
from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.client.cli import register
from zgserve.client.openai_client import ExchangeRecorder
from zgserve.client.provider import response_signer, sdk_would_verify
from zgserve.client.responses import answer_text, usage
from zgserve.client.user import UserClient
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet

pytestmark = pytest.mark.slow

DEPOSIT = 10 * OG


@contextlib.asynccontextmanager
async def backend(kind: str) -> AsyncIterator[tuple[str | None, str]]:
    """(target URL for the service, model name): the fake backend, or None for embedded llama.cpp."""
    if kind == "fake":
        async with FakeOpenAIBackend() as fake:
            yield fake.url, "fake-model"
    else:
        yield None, "SmolLM2-135M-Instruct"


@contextlib.asynccontextmanager
async def provider_stack(devnet: Devnet, tmp_path: Path, kind: str) -> AsyncIterator[tuple[str, str]]:
    """Service + broker for a fresh provider; yields (provider address, broker URL)."""
    async with (
        backend(kind) as (target, model),
        stack.provider_stack(devnet, tmp_path, target_url=target, model=model) as provider,
    ):
        yield provider.address, provider.broker_url


@pytest.mark.parametrize("kind", ["fake", pytest.param("llama", marks=pytest.mark.llama)])
async def test_python_user_journey(devnet: Devnet, tmp_path: Path, kind: str) -> None:
    async with provider_stack(devnet, tmp_path, kind) as (provider, broker_url):
        user_key = (await devnet.new_account()).private_key
        async with UserClient(devnet.chain, user_key) as user:
            # Fund, discover, acknowledge (the first transfer creates an acknowledged account).
            await user.deposit(DEPOSIT)
            services = {s.provider: s for s in await user.list_providers()}
            assert provider in services
            service = services[provider]
            assert service.url == broker_url
            assert sdk_would_verify(service) is None  # processResponse would check this service
            await user.acknowledge(provider)
            await user.ensure_funds(provider)  # as the SDK does before each request
            transferred = (await user.get_account(provider)).balance  # type: ignore[union-attr]
            assert transferred >= 2 * OG

            recorder = ExchangeRecorder()
            messages: Any = [{"role": "user", "content": "Name three colours of the rainbow."}]

            # Non-streamed, with the synchronous client (run off the event loop).
            sync_client = await user.openai(provider, recorder=recorder, max_retries=0)
            completion = await asyncio.to_thread(
                sync_client.chat.completions.create, model=service.model, messages=messages, max_tokens=24
            )
            sync_client.close()
            plain = recorder.last
            assert plain.chat_id == completion.id
            assert plain.response_headers.get("zg-res-key") == completion.id

            # Streamed, with the async client (usage requested in the last event).
            async_client = await user.async_openai(provider, recorder=recorder, max_retries=0)
            stream = await async_client.chat.completions.create(
                model=service.model,
                messages=messages,
                max_tokens=24,
                stream=True,
                stream_options={"include_usage": True},
            )
            streamed_text = "".join(
                [c.choices[0].delta.content or "" async for c in stream if c.choices]  # type: ignore[misc]
            )
            await async_client.close()
            streamed = recorder.last
            assert streamed.streamed
            assert streamed.complete

            # Signatures over the exact bytes, by the service's attested key; content as received.
            for exchange, text in ((plain, completion.choices[0].message.content), (streamed, streamed_text)):
                check = await user.verify_response(provider, exchange)
                assert check.verified, check.render()
                assert answer_text(exchange) == text
                assert text
                record = await user.fetch_signature(provider, exchange.chat_id or "")
                assert (record.signing_address or "").lower() == response_signer(service).lower()

            # The fees the broker recorded are the token counts times the on-chain prices.
            expected = 0
            for exchange in (plain, streamed):
                tokens = usage(exchange)
                assert tokens is not None, "usage missing from the response bytes"
                expected += tokens["prompt_tokens"] * INPUT_PRICE + tokens["completion_tokens"] * OUTPUT_PRICE
            assert expected > 0
            assert await user.unsettled_fee(provider) == expected

            # Refund request: the whole account balance starts its lock time.
            await user.request_refund([provider])
            account = await user.get_account(provider)
            assert account is not None
            assert account.pending_refund == account.balance == transferred

            # The provider settles; the chain moves exactly the recorded fees.
            provider_before = await devnet.chain.balance(provider)
            async with (
                aiohttp.ClientSession() as http,
                http.post(broker_url + "/v1/settle", json={}) as resp,
            ):
                report = json.loads(await resp.read())
                assert resp.status == 200, report
            assert {s["status"] for s in report["settlements"]} == {"success"}, report
            gas = 0
            for tx in report["transactions"]:
                tx_hash = tx["tx_hash"] if isinstance(tx, dict) else tx
                receipt = await devnet.chain.get_receipt(tx_hash)
                assert receipt is not None
                if receipt.sender == provider:
                    gas += receipt.fee
            assert await devnet.chain.balance(provider) - provider_before + gas == expected
            assert await user.unsettled_fee(provider) == 0

            # The user audits the settlement against the answers it kept: receipts, proofs, signatures.
            audit = await user.audit_settlements(provider, recorder.exchanges)
            assert audit.ok, [r.problems for r in audit.reports]
            assert len(audit.settlements) == 1
            assert audit.reports[0].receipts == 2
            assert audit.total_fee == expected
            # Without the answers, the receipts cannot be matched: the audit says so.
            blind = await user.audit_settlements(provider)
            assert not blind.ok

            # What the user can still get back: the deposit minus the fees, to the neuron.
            account = await user.get_account(provider)
            ledger = await user.get_ledger()
            assert account is not None
            assert ledger is not None
            assert account.balance == transferred - expected
            assert account.pending_refund == transferred - expected  # fees ate into the refund
            assert ledger.total_balance == DEPOSIT - expected
            assert ledger.available_balance + account.pending_refund == DEPOSIT - expected


async def _cli(deployment_file: Path, key: str, data_home: Path, *args: str) -> tuple[int, str]:
    """``zgserve user ... ARGS`` with ``XDG_DATA_HOME=data_home``; (exit code, output)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    argv = ["user", "--deployment", str(deployment_file), "--key", key, *args]
    env = {"XDG_DATA_HOME": str(data_home), "COLUMNS": "200"}
    # The command runs its own event loop (asyncio.run), so it runs in a worker thread.
    result = await asyncio.to_thread(CliRunner().invoke, app, argv, env=env, catch_exceptions=False)
    return result.exit_code, result.output


async def test_cli_chat_and_verify(devnet: Devnet, tmp_path: Path) -> None:
    """``zgserve user chat`` and ``verify`` against the same stack, as a user would run them."""
    deployment_file = devnet.deployment.save(tmp_path / "user-deployment.json")
    user_key = (await devnet.new_account()).private_key
    run = functools.partial(_cli, deployment_file, user_key, tmp_path / "data")

    async with provider_stack(devnet, tmp_path, "fake") as (provider, _):
        assert (await run("deposit", "5"))[0] == 0
        assert (await run("acknowledge", provider))[0] == 0
        for extra in ([], ["--stream"]):
            args = ("chat", provider, "Hello there", "--max-tokens", "16", "--no-history", *extra)
            code, output = await run(*args)
            assert code == 0, output
            assert "RESULT: verified" in output
            assert "PASS         response hash" in output
        assert not (tmp_path / "data").exists()  # --no-history keeps nothing
        code, output = await run("verify", provider, "--offline")
        # A simulated TEE binds no signer in its quote and is never reported as attested.
        assert "/v1/quote report_data is the on-chain TEE signer" in output
        assert "PASS         /v1/quote report_data" not in output
        assert "SIMULATED" in output
        assert code == 1, output


async def test_cli_audit(devnet: Devnet, tmp_path: Path) -> None:
    """``zgserve user chat`` keeps the answers; after a settlement ``zgserve user audit`` checks them."""
    deployment_file = devnet.deployment.save(tmp_path / "user-deployment.json")
    account = await devnet.new_account()
    run = functools.partial(_cli, deployment_file, account.private_key, tmp_path / "data")

    async with provider_stack(devnet, tmp_path, "fake") as (provider, broker_url):
        assert (await run("deposit", "5"))[0] == 0
        assert (await run("acknowledge", provider))[0] == 0
        for extra in ([], ["--stream"]):
            code, output = await run("chat", provider, "Hello there", "--max-tokens", "16", *extra)
            assert code == 0, output
            assert "kept for a later audit" in output
        kept = tmp_path / "data" / "zgserve" / "exchanges" / f"{account.address}-{provider}.jsonl"
        assert kept.stat().st_mode & 0o777 == 0o600
        lines = kept.read_text().splitlines()
        assert len(lines) == 2

        async with aiohttp.ClientSession() as http, http.post(broker_url + "/v1/settle", json={}) as resp:
            report = json.loads(await resp.read())
            assert resp.status == 200, report
        assert {s["status"] for s in report["settlements"]} == {"success"}, report

        code, output = await run("audit", provider)
        assert code == 0, output
        assert "2/2 receipts match held answers" in output
        assert "2/2 answers signed by the service" in output
        assert "2 Merkle proofs" in output
        assert "0 of the provider's 2 receipts could not be matched" in output
        assert "RESULT: verified" in output

        # The first answer's bytes changed after the fact: the service's signature no longer covers them.
        record = json.loads(lines[0])
        body = base64.b64decode(record["response"])
        answer = json.loads(body)["choices"][0]["message"]["content"]
        record["response"] = base64.b64encode(body.replace(answer.encode(), b"something else")).decode()
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text(json.dumps(record) + "\n" + lines[1] + "\n")
        code, output = await run("audit", provider, "--history", str(tampered))
        assert code == 1, output
        assert "the service's signature does not verify" in output
        assert "RESULT: FAILED" in output

        # Only one answer kept: the other receipt cannot be matched, and the audit says so.
        partial = tmp_path / "partial.jsonl"
        partial.write_text(lines[1] + "\n")
        code, output = await run("audit", provider, "--history", str(partial))
        assert code == 3, output
        assert "1 of the provider's 2 receipts could not be matched" in output
