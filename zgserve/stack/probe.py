"""``zgserve probe``: what a new machine offers for attestation, and what verifiers make of it.

One screen for a provider bringing up hardware:

1. what is found: dstack guest-agent sockets, the TDX configfs-tsm provider (or why
   not), NVIDIA GPUs and their confidential-computing mode (CC, protected-PCIe, off),
   and the TEE backend ``auto`` would choose;
2. a fresh attestation report, made exactly as the service makes it, bound to a fresh
   nonce and a probe key from the TEE, and the broker's ``/v1/quote`` body;
3. the verdicts: our verifier (``zgserve.client.verify``; NVIDIA's NRAS only with
   ``--online``) and the official SDK's own dstack compose and signer checks, run
   from Node on those two documents.

Nothing is registered or sent anywhere but NRAS (with ``--online``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from zgserve.broker.quote import build_quote
from zgserve.client.verify import Verification, verify_report
from zgserve.devnet.node import NodeToolsMissing
from zgserve.service.attestation import (
    DSTACK_SOCKET_SEARCH,
    AttestationError,
    detect_tee,
    dstack,
    get_gpu_evidence_source,
    get_tee_backend,
    nvidia,
    tdx,
)
from zgserve.service.reports import ReportService
from zgserve.stack.sdk_checks import sdk_dstack_checks


@dataclass
class ProbeResult:
    """Everything the probe found and concluded; ``as_json`` for machines, ``render`` for people."""

    findings: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    quote: dict[str, Any] | None = None
    signer: str | None = None
    ours: Verification | None = None
    sdk: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "findings": self.findings,
            "signer": self.signer,
            "our_verifier": [vars(c) for c in self.ours.checks] if self.ours else None,
            "sdk": self.sdk,
            "errors": self.errors,
            "report": self.report,
            "quote": self.quote,
        }


def find_hardware(dstack_socket: Path | None = None) -> dict[str, Any]:
    """What this host offers, without making any evidence."""
    candidates = [dstack_socket] if dstack_socket else [dstack.DSTACK_SOCKET, dstack.TAPPD_SOCKET]
    if dstack_socket is None:
        candidates += list(DSTACK_SOCKET_SEARCH)
    provider, why = tdx.probe_provider_reason()
    return {
        "dstack_sockets": {str(p): dstack.find_socket(p) is not None for p in candidates},
        "tdx": {"provider": provider, "usable": provider == tdx.TDX_PROVIDER, "detail": why},
        "gpu": nvidia.probe(),
        "auto_backend": detect_tee(dstack_socket),
    }


async def probe(
    *, tee: str = "auto", dstack_socket: Path | None = None, gpu: str = "auto", online: bool = False
) -> ProbeResult:
    """Find, attest, verify; errors are collected, never raised (a probe reports them)."""
    result = ProbeResult(findings=find_hardware(dstack_socket))
    if tee == "auto":
        tee = result.findings["auto_backend"]  # decided (and its reason logged) once
    try:
        backend = get_tee_backend(tee, dstack_socket=dstack_socket)  # type: ignore[arg-type]
        gpu_source = get_gpu_evidence_source(gpu)  # type: ignore[arg-type]
    except AttestationError as exc:
        result.errors.append(f"no TEE backend: {exc}")
        return result
    try:
        signer = await backend.signing_key("probe")
        result.signer = signer.address
        nonce = secrets.token_bytes(32)
        result.report = await ReportService(backend, gpu_source, signer.address).build(nonce)
        result.quote = await build_quote(backend, signer)
        result.ours = await verify_report(
            result.report, nonce, expected_address=signer.address, online=online
        )
    except AttestationError as exc:
        result.errors.append(f"evidence could not be made: {exc}")
        return result
    finally:
        await backend.close()
    try:
        result.sdk = await sdk_dstack_checks(
            {"service report": result.report, "broker /v1/quote": result.quote}
        )
    except NodeToolsMissing as exc:
        result.errors.append(f"the official SDK's checks did not run: {exc.message}")
    return result


def render(result: ProbeResult, console: Console) -> None:
    found = result.findings
    table = Table(title="What this machine offers", show_header=False)
    for path, present in found.get("dstack_sockets", {}).items():
        table.add_row("dstack socket", path, "[green]found[/]" if present else "absent")
    tdx_found = found.get("tdx", {})
    table.add_row("TDX configfs-tsm", str(tdx_found.get("provider")), str(tdx_found.get("detail")))
    gpus = found.get("gpu", {})
    gpu_line = gpus.get("error") or f"mode {gpus.get('gpu_mode')}, {len(gpus.get('gpus', []))} GPU(s)"
    table.add_row("NVIDIA GPUs", str(gpus.get("driver_version", "")), str(gpu_line))
    table.add_row("auto chooses", str(found.get("auto_backend")), "")
    console.print(table)
    if result.report is not None:
        simulated = bool(result.report.get("simulated"))
        label = "[bold red]SIMULATED (no hardware evidence)[/]" if simulated else "[green]hardware[/]"
        console.print(f"Fresh report: TEE {result.report.get('tee')} {label}, probe signer {result.signer}")
    if result.ours is not None:
        console.print("[bold]Our verifier[/]")
        console.print(result.ours.render(), highlight=False)
    if result.sdk is not None:
        sdk = Table(title="The official SDK's checks (processDStackVerification, extractTeeSignerAddress)")
        for col in ("document", "compose", "signer in report_data", "signer matches"):
            sdk.add_column(col)
        for name, verdict in result.sdk.items():
            signer = str(verdict.get("signer"))
            if not (signer.isascii() and signer.isprintable()):
                signer = "(not text: no address bound)"
            matches = result.signer is not None and signer.lower() == result.signer.lower()
            sdk.add_row(
                name,
                "[green]VALID[/]" if verdict.get("compose") else "[red]not valid[/]",
                signer,
                "[green]yes[/]" if matches else "[red]no[/]",
            )
        console.print(sdk)
    for error in result.errors:
        console.print(f"[red]{error}[/]")


def dump(result: ProbeResult) -> str:
    return json.dumps(result.as_json(), indent=2, default=str)
