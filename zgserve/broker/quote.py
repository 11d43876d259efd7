"""The broker's attestation for ``GET /v1/quote``, in the shape the SDK's ``verifyService`` reads.

``report_data`` is base64 of the ASCII ``0x…`` settlement-signer address, NUL-padded
to 64 bytes; the TEE quote is taken over exactly those 64 bytes, so the address the
SDK reads is the one the hardware bound. ``event_log`` and ``tcb_info`` come from the
backend as they are; a simulated backend has neither, and the report says
``"tee": "simulated"`` with its warning rather than inventing evidence.
"""

from __future__ import annotations

import base64
from typing import Any

from zgserve.common.signing import Signer
from zgserve.service.attestation import TeeBackend


def report_data(address: str) -> bytes:
    """The 64 bytes quoted: the ASCII address, NUL-padded."""
    return address.encode("ascii").ljust(64, b"\x00")


async def build_quote(tee: TeeBackend, signer: Signer) -> dict[str, Any]:
    data = report_data(signer.address)
    quote = await tee.quote(data)
    info = dict(quote.info)
    report: dict[str, Any] = {
        "tee": quote.tee,
        "simulated": not tee.is_hardware,
        "signing_address": signer.address,
        "provider_signer": signer.address,
        "signing_algo": "ecdsa",
        "report_data": base64.b64encode(data).decode("ascii"),
        "quote": quote.quote.hex() if quote.quote else "",
        "event_log": quote.event_log,
        "info": info,
    }
    tcb_info = info.get("tcb_info")
    if tcb_info is not None:
        report["tcb_info"] = tcb_info
    if not tee.is_hardware:
        report["warning"] = info.get("warning", "simulated TEE: no hardware evidence")
    return report
