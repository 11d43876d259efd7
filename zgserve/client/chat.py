"""The flows behind ``zgserve user chat``, ``verify`` and ``audit``.

A chat is verified at once and, unless told otherwise, kept in the user's history
(:mod:`zgserve.client.history`) so that the provider's settlements can be audited later.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from zgserve.client import history as exchange_history
from zgserve.client.openai_client import ExchangeRecorder
from zgserve.client.provider import response_signer, sdk_would_verify
from zgserve.client.responses import answer_text, usage
from zgserve.client.settlements import SettlementAudit
from zgserve.client.user import UserClient
from zgserve.client.verify import Verification, verify_report
from zgserve.common.errors import ZgError
from zgserve.common.money import fmt_og


def quote_signer(quote: dict[str, Any]) -> str | None:
    """The address in ``/v1/quote``'s ``report_data``, decoded as the SDK's ``verifyService`` does."""
    data = quote.get("report_data")
    if not isinstance(data, str) or not data:
        return None
    try:
        return base64.b64decode(data).decode("utf-8", "replace").replace("\x00", "")
    except (binascii.Error, ValueError):
        return None


async def chat(
    user: UserClient,
    provider: str,
    message: str,
    model: str | None = None,
    stream: bool = False,
    max_tokens: int = 128,
    fund: bool = True,
    console: Console | None = None,
    history: Path | None = None,
) -> Verification:
    """Send ``message``, print the answer, check its signature against the exact bytes.

    With ``history`` the completed exchange is appended there for a later audit.
    """
    out = console or Console(highlight=False)
    service = await user.get_service(provider)
    if fund:
        moved = await user.ensure_funds(provider)
        if moved:
            out.print(f"[dim]moved {fmt_og(moved)} from the ledger to the provider account[/]")
    recorder = ExchangeRecorder()
    client = await user.async_openai(provider, recorder=recorder, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": message}]
    try:
        if stream:
            chunks = await client.chat.completions.create(
                model=model or service.model, messages=messages, max_tokens=max_tokens, stream=True
            )
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    out.print(chunk.choices[0].delta.content, end="")
            out.print()
        else:
            await client.chat.completions.create(
                model=model or service.model, messages=messages, max_tokens=max_tokens
            )
            out.print(answer_text(recorder.last))
    finally:
        await client.close()
    exchange = recorder.last
    if history is not None and exchange_history.append(
        history, exchange, user=user.address, provider=provider
    ):
        out.print(f"[dim]kept for a later audit in {history}[/]")
    tokens = usage(exchange) or {}
    fee = (
        tokens.get("prompt_tokens", 0) * service.input_price
        + tokens.get("completion_tokens", 0) * service.output_price
    )
    out.print(
        f"[dim]chat id {exchange.chat_id} · {tokens.get('prompt_tokens', '?')} prompt + "
        f"{tokens.get('completion_tokens', '?')} completion tokens · fee {fmt_og(fee)}[/]"
    )
    result = await user.verify_response(provider, exchange)
    reason = sdk_would_verify(service)
    if reason is not None:
        result.skip("the SDK's processResponse preconditions", reason)
    return result


async def verify_provider(user: UserClient, provider: str, *, online: bool = True) -> Verification:
    """The SDK's ``verifyService`` signer check on ``/v1/quote``, then a fresh attestation report."""
    service = await user.get_service(provider, fresh=True)
    http = await user.provider_http(provider)
    result = Verification()
    result.add("service signer acknowledged by the contract owner", service.tee_signer_acknowledged)
    try:
        quote = await http.quote()
    except ZgError as exc:
        result.add("/v1/quote answers", False, exc.message)
    else:
        signer = quote_signer(quote)
        result.add(
            "/v1/quote report_data is the on-chain TEE signer",
            signer is not None and signer.lower() == service.tee_signer_address.lower(),
            f"{signer} vs {service.tee_signer_address}",
        )
        if quote.get("simulated") or quote.get("tee") == "simulated":
            result.add("/v1/quote from TEE hardware", False, "the broker runs in SIMULATED mode")
    nonce = secrets.token_bytes(32)
    try:
        report = await http.attestation_report(nonce)
    except ZgError as exc:
        result.add("attestation report answers", False, exc.message)
        return result
    checked = await verify_report(report, nonce, expected_address=response_signer(service), online=online)
    result.checks.extend(checked.checks)
    return result


async def audit(
    user: UserClient, provider: str, history: Path, console: Console | None = None
) -> SettlementAudit:
    """Audit the provider's settlements against the answers kept at ``history``; print a table."""
    out = console or Console(highlight=False)
    kept = exchange_history.load(history, user=user.address, provider=provider)
    if kept.skipped:
        out.print(f"[yellow]{kept.skipped} lines of {history} skipped (unreadable, or another account)[/]")
    result = await user.audit_settlements(provider, kept.exchanges)
    if not result.settlements:
        out.print(f"no settlements by {provider} yet")
        return result
    out.print(settlement_table(result))
    for report in result.reports:
        for note in report.notes:
            out.print(f"[dim]note: {note}[/]")
    for charged in result.double_charges:
        out.print(f"[red]charged twice:[/] {charged}")
    out.print(
        f"{len(result.unmatched)} of the provider's {result.receipts} receipts could not be matched"
        f" because the answer was not kept (answers kept in {history}: {len(kept.exchanges)})"
    )
    verdict = "FAILED" if result.failed else "verified" if result.ok else "incomplete"
    out.print(f"RESULT: {verdict}")
    return result


def settlement_table(result: SettlementAudit) -> Table:
    """One row per settlement: nonce, status, total, receipts, what verified, what failed."""
    table = Table()
    for name in ("nonce", "status", "total", "receipts"):
        table.add_column(name, no_wrap=True)
    table.add_column("verified", overflow="fold")
    table.add_column("failed", overflow="fold")
    for settlement, report in zip(result.settlements, result.reports, strict=True):
        failed = list(report.failures)
        if report.unmatched:
            failed.append(f"unmatched, answer not kept: {len(report.unmatched)}")
        table.add_row(
            str(settlement["nonce"]),
            str(settlement.get("status", "")),
            fmt_og(report.total_fee),
            str(report.receipts),
            "\n".join(report.verified) or "-",
            "\n".join(failed) or "-",
        )
    return table
