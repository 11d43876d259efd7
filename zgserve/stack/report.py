"""Printing what ``zgserve up`` did: the demo's report and the URLs of the running stack.

The report's key lines are stable (tests and CI read them):
``first verified answer after <s> s``, ``provider's on-chain earnings: <n> neuron``,
``settlement receipts verified: <k>/<n>``, and the last line ``DEMO OK`` or ``DEMO FAILED``.
"""

from __future__ import annotations

import textwrap

from rich.console import Console
from rich.table import Table
from rich.text import Text

from zgserve.common.money import fmt_og
from zgserve.stack.demo import ChatOutcome, DemoReport
from zgserve.stack.demo_media import MediaOutcome
from zgserve.stack.local import RunningStack

FIRST_ANSWER_TARGET_S = 60.0
_ANSWER_CHARS = 400


def _mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[bold red]✗[/]"


def _print_chat(console: Console, chat: ChatOutcome) -> None:
    verified = chat.verification.verified
    console.print(
        f"{chat.kind} chat ({chat.seconds:.1f} s): {chat.prompt_tokens} prompt + {chat.completion_tokens} "
        f"completion tokens, fee {chat.fee} neuron, signature {_mark(verified)}"
        + (" verified" if verified else " NOT verified")
    )
    answer = chat.answer if len(chat.answer) <= _ANSWER_CHARS else chat.answer[:_ANSWER_CHARS] + "…"
    width = max(40, console.width - 4)
    text = textwrap.fill(answer or "(empty answer)", width, initial_indent="    ", subsequent_indent="    ")
    console.print(Text(text, style="italic"))


def _print_media(console: Console, outcome: MediaOutcome) -> None:
    verified = outcome.verification.verified
    fees_agree = outcome.charged == outcome.fee == outcome.recorded_fee
    console.print(
        f"{outcome.kind} ({outcome.model}, {outcome.seconds:.1f} s): {outcome.summary}; "
        f"fee {outcome.fee} neuron by the billing rule, X-0G-Fee {outcome.charged}, "
        f"recorded {outcome.recorded_fee} {_mark(fees_agree)}; signature {_mark(verified)}"
        + (" verified" if verified else " NOT verified")
    )


def print_demo_report(console: Console, report: DemoReport) -> None:
    """The demo's findings, then ``DEMO OK`` or ``DEMO FAILED`` on the last line."""
    console.print()
    console.rule("[bold]Demo report")
    console.print(f"user {report.user} → provider {report.provider}, model {report.model}")
    console.print(
        f"ledger funded with {fmt_og(report.deposit)}, {fmt_og(report.transferred)} moved to the provider; "
        f"provider listed: {_mark(report.listed)}"
    )
    passed = [c for c in report.attestation.checks if c.status == "pass"]
    console.print(
        f"attestation: {len(passed)}/{len(report.attestation.checks)} checks passed "
        "(fresh nonce, signing address = on-chain TargetTeeAddress, /v1/quote = on-chain TEE signer)"
    )
    if report.simulated:
        names = ", ".join(c.name for c in report.hardware) or "hardware evidence"
        console.print(
            f"[yellow]SIMULATED TEE[/]: no TEE hardware here, so nothing attests where the keys live "
            f"([dim]{names}: not available[/]). Run on TDX / H100 hardware for real evidence."
        )
    for chat in report.chats:
        _print_chat(console, chat)
    chat_fees = sum(c.fee for c in report.chats)
    console.print(f"fees charged for the chats: {chat_fees} neuron ({fmt_og(chat_fees)})")
    for outcome in report.media:
        _print_media(console, outcome)
    if report.media:
        media_fees = sum(m.fee for m in report.media)
        console.print(f"fees charged for media: {media_fees} neuron ({fmt_og(media_fees)})")
    recorded = [c.recorded_fee for c in report.chats] + [m.recorded_fee for m in report.media]
    console.print(f"fees recorded by the broker: {sum(f or 0 for f in recorded)} neuron")
    settlement = report.settlement
    if settlement is not None:
        txs = settlement.response.get("transactions", [])
        console.print(
            f"settlement: {len(txs)} transaction(s), statuses {', '.join(settlement.statuses) or '-'}, "
            f"paid {settlement.paid} neuron"
        )
        earned = settlement.earned
        console.print(f"provider's on-chain earnings: {earned} neuron ({fmt_og(earned)})")
        console.print(
            f"settlement receipts verified: {settlement.receipts_verified}/{settlement.receipts} "
            "(Merkle proofs to requestsHash, each receipt = a signed answer held by the user, "
            "EIP-712 signature by the on-chain TEE signer)"
        )
    if report.first_verified_s is not None:
        within = report.first_verified_s <= FIRST_ANSWER_TARGET_S
        console.print(
            f"first verified answer after {report.first_verified_s:.1f} s "
            f"{_mark(within)} [dim](target {FIRST_ANSWER_TARGET_S:.0f} s, from the start of `zgserve up`)[/]"
        )
    for problem in report.problems:
        console.print(f"[bold red]problem:[/] {problem}")
    console.print("[bold green]DEMO OK[/]" if report.ok else "[bold red]DEMO FAILED[/]")


def print_urls(console: Console, stack: RunningStack) -> None:
    """Where everything is, for users and for the operator."""
    table = Table(title="zgserve is up", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("OpenAI base URL (users)", f"{stack.openai_base_url}  [dim](Bearer app-sk-… token)[/]")
    table.add_row("Dashboard (provider)", f"{stack.broker_url}/dashboard  [dim](admin access rules)[/]")
    table.add_row(
        "Admin API",
        f"{stack.broker_url}/v1/service · /v1/settle · /v1/user · /v1/request · /v1/settlement",
    )
    table.add_row("Metrics (Prometheus)", stack.metrics_url)
    if stack.service_url is not None:
        table.add_row("Verifiable service", f"{stack.service_url}  [dim](/v1/attestation/report)[/]")
    if stack.model_url is not None:
        table.add_row("Model server", f"{stack.model_url}/v1  [dim]({stack.model})[/]")
    for served in stack.media:
        table.add_row(
            f"Service for {served.model}",
            f"{served.service_url}  [dim]({served.type}, /v1/attestation/report)[/]",
        )
        table.add_row(
            f"Backend of {served.model}", f"{served.backend_url}/v1  [dim]({served.backend_label})[/]"
        )
    if stack.rpc_url is not None:
        table.add_row("Chain RPC", stack.rpc_url)
    if stack.deployment_file is not None:
        table.add_row("Deployment", f"{stack.deployment_file}  [dim](contracts, dev keys)[/]")
    table.add_row("Broker config", str(stack.config_file))
    table.add_row("Logs", f"{stack.log_dir}/")
    table.add_row("Provider", stack.provider)
    console.print()
    console.print(table)
