"""The broker's attestation for ``GET /v1/quote``, in the shape the SDK's ``verifyService`` reads.

With TEE hardware, ``report_data`` is base64 of the ASCII ``0x…`` settlement-signer
address, NUL-padded to 64 bytes, and the TEE quote is taken over exactly those 64 bytes,
so the address the SDK reads is the one the hardware bound. ``quote``, ``event_log``,
``vm_config`` and ``tcb_info`` sit at the top level as the TEE runtime gave them, where
dstack-verifier and the SDK's compose check read them.

A simulated backend has no quote, and its ``report_data`` is a plain-text marker, not the
address: the SDK's signer check compares the decoded ``report_data`` with the on-chain
signer and ignores every label, so a bound address would make a simulated provider look
verified. The signer stays readable in ``signing_address`` / ``provider_signer``, beside
``"tee": "simulated"`` and the warning.
"""

from __future__ import annotations

import base64
from typing import Any

from zgserve.common.signing import Signer
from zgserve.service.attestation import TeeBackend
from zgserve.service.attestation.dstack import verifier_fields
from zgserve.service.attestation.simulated import SIMULATED_REPORT_DATA


def report_data(address: str) -> bytes:
    """The 64 bytes quoted: the ASCII address, NUL-padded."""
    return address.encode("ascii").ljust(64, b"\x00")


async def build_quote(tee: TeeBackend, signer: Signer) -> dict[str, Any]:
    data = report_data(signer.address)
    quote = await tee.quote(data)
    # An empty quote (dstack without TDX) binds nothing either.
    simulated = not tee.is_hardware or not quote.quote
    info = dict(quote.info)
    # One copy, at the top level (below): dstack-verifier does not look inside ``info``.
    info.pop("vm_config", None)
    report: dict[str, Any] = {
        "tee": quote.tee,
        "simulated": simulated,
        "signing_address": signer.address,
        "provider_signer": signer.address,
        "signing_algo": "ecdsa",
        "report_data": base64.b64encode(SIMULATED_REPORT_DATA if simulated else data).decode("ascii"),
        "quote": "",
        "event_log": quote.event_log,
        "info": info,
    }
    if simulated:
        report["warning"] = info.get("warning", "simulated TEE: no hardware evidence")
    else:
        report.update(verifier_fields(quote))
    return report
