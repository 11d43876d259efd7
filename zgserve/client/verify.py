"""Client-side verification of a verifiable service's answers and attestation reports.

Every check ends as PASS, FAIL or NOT CHECKED (with the reason it could not run);
:attr:`Verification.verified` is true only when every check ran and passed, so a
check that did not run never counts as verified.

* Signatures: both SHA-256 hashes recomputed from the bytes the client sent and
  received, the EIP-191 signature recovered and compared with the attested address.
* Reports: the nonce echo, the TDX quote's ``report_data`` binding (address padded
  to 32 bytes + nonce) and debug flag, the GPU evidence's nonce (in the payload and
  inside each SPDM report), and, when NRAS is reachable, NVIDIA's verdict checked as
  NVIDIA's policy states it (see :mod:`zgserve.client.nras`). The Intel quote's
  signature chain needs Intel's collateral service and is reported as not checked.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from zgserve.client.nras import NRAS_JWKS_URL as NRAS_JWKS_URL
from zgserve.client.nras import NRAS_URL as NRAS_URL
from zgserve.client.nras import NRAS_V4_URL as NRAS_V4_URL
from zgserve.client.nras import JwtError as JwtError
from zgserve.client.nras import check_nras as check_nras
from zgserve.client.nras import verify_jwt_es384 as verify_jwt_es384
from zgserve.common.signing import recover_address, sha256_hex
from zgserve.common.tdx_quote import TdxQuoteError, parse_tdx_quote

SPDM_MEASUREMENTS_PREFIX = bytes([0x11, 0xE0, 0x01, 0xFF])

Status = Literal["pass", "fail", "not checked"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str = ""


@dataclass
class Verification:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, "pass" if ok else "fail", detail))

    def skip(self, name: str, reason: str) -> None:
        self.checks.append(Check(name, "not checked", reason))

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def not_checked(self) -> list[Check]:
        return [c for c in self.checks if c.status == "not checked"]

    @property
    def verified(self) -> bool:
        return bool(self.checks) and not self.failed and not self.not_checked

    def render(self) -> str:
        labels = {"pass": "PASS", "fail": "FAIL", "not checked": "NOT CHECKED"}
        lines = [
            f"{labels[c.status]:<12} {c.name}" + (f": {c.detail}" if c.detail else "") for c in self.checks
        ]
        if self.verified:
            lines.append("RESULT: verified (every check ran and passed)")
        elif self.failed:
            lines.append(f"RESULT: FAILED ({len(self.failed)} failed check(s))")
        else:
            lines.append(f"RESULT: not fully verified ({len(self.not_checked)} check(s) could not be done)")
        return "\n".join(lines)


# -- signatures ---------------------------------------------------------------


def verify_signature(
    request_body: bytes,
    response_body: bytes,
    record: dict[str, Any],
    *,
    expected_address: str | None = None,
    into: Verification | None = None,
) -> Verification:
    """Check a signature record against the exact bytes sent and received."""
    result = into or Verification()
    text = str(record.get("text", ""))
    signature = str(record.get("signature", ""))
    claimed = str(record.get("signing_address", ""))
    parts = text.split(":")
    request_hash, response_hash = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
    result.add("request hash", request_hash == sha256_hex(request_body), f"sha256 {request_hash[:16]}...")
    result.add("response hash", response_hash == sha256_hex(response_body), f"sha256 {response_hash[:16]}...")
    try:
        recovered = recover_address(text, signature)
    except ValueError as exc:
        result.add("signature", False, f"does not recover: {exc}")
        return result
    if claimed:
        result.add(
            "signature recovers to the record's address", recovered.lower() == claimed.lower(), recovered
        )
    if expected_address is None:
        result.skip("signer is the attested key", "no attested address given")
    else:
        result.add(
            "signer is the attested key",
            recovered.lower() == expected_address.lower(),
            f"recovered {recovered}, attested {expected_address}",
        )
    return result


# -- attestation reports --------------------------------------------------------


def expected_report_data(address: str, nonce: bytes) -> bytes:
    return bytes.fromhex(address.removeprefix("0x")).ljust(32, b"\x00") + nonce


def _check_quote(result: Verification, quote_hex: str, address: str, nonce: bytes) -> None:
    if not quote_hex:
        result.add("TDX quote present", False, "the report has no intel_quote")
        return
    try:
        quote = bytes.fromhex(quote_hex.removeprefix("0x"))
    except ValueError:
        result.add("TDX quote present", False, "intel_quote is not hex")
        return
    try:
        body = parse_tdx_quote(quote)
    except TdxQuoteError as exc:
        result.add("TDX quote format", False, str(exc))
        return
    result.add("TDX quote format", True, f"version {body.version}, body type {body.body_type}")
    expected = expected_report_data(address, nonce)
    got = body.report_data
    result.add("quote report_data[:32] = signing address", got[:32] == expected[:32], got[:32].hex())
    result.add("quote report_data[32:] = nonce", got[32:] == expected[32:], got[32:].hex())
    result.add("TD is not a debug TD", not body.debug, f"MRTD {body.mrtd.hex()[:24]}...")
    result.skip(
        "TDX quote signature chain (Intel)",
        "needs Intel's collateral (PCS/PCCS) and a quote verifier such as dcap-qvl; not done here",
    )


def _check_gpu_local(result: Verification, payload: dict[str, Any] | None, nonce: bytes) -> bool:
    """Local GPU checks; True when there is evidence worth sending to NRAS."""
    if payload is None:
        result.add("GPU evidence present", False, "nvidia_payload is not a JSON object")
        return False
    result.add("GPU payload nonce = nonce", str(payload.get("nonce", "")).lower() == nonce.hex(), "")
    evidence_list = payload.get("evidence_list") or []
    if not evidence_list:
        reason = payload.get("reason") or "evidence_list is empty"
        result.add(
            "GPU evidence present", False, f"{reason}" + (" (simulated)" if payload.get("simulated") else "")
        )
        return False
    for index, item in enumerate(evidence_list):
        try:
            evidence = base64.b64decode(item.get("evidence", ""), validate=True)
        except (binascii.Error, AttributeError):
            result.add(f"GPU {index} evidence", False, "not base64")
            continue
        ok = evidence[:4] == SPDM_MEASUREMENTS_PREFIX and evidence[4:36] == nonce
        result.add(f"GPU {index} SPDM report carries the nonce", ok, f"{len(evidence)} bytes")
    return True


def verify_report_local(
    report: dict[str, Any],
    nonce: bytes,
    *,
    expected_address: str | None = None,
    into: Verification | None = None,
) -> Verification:
    """Every report check that needs no network."""
    result = into or Verification()
    address = str(report.get("signing_address", ""))
    result.add("request_nonce echoes the nonce", str(report.get("request_nonce", "")).lower() == nonce.hex())
    if expected_address is not None:
        result.add(
            "signing_address is the expected one", address.lower() == expected_address.lower(), address
        )
    tee = str(report.get("tee", "unknown"))
    if tee == "simulated" or report.get("simulated"):
        result.add("TEE hardware evidence", False, "the service runs in SIMULATED mode: nothing is attested")
    else:
        _check_quote(result, str(report.get("intel_quote", "")), address, nonce)
    try:
        payload = json.loads(report.get("nvidia_payload") or "null")
    except ValueError:
        payload = None
    _check_gpu_local(result, payload if isinstance(payload, dict) else None, nonce)
    return result


async def verify_report(
    report: dict[str, Any],
    nonce: bytes,
    *,
    expected_address: str | None = None,
    online: bool = True,
    nras_url: str = NRAS_URL,
    jwks_url: str = NRAS_JWKS_URL,
    nras_service_key: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Verification:
    """Local checks, then NVIDIA's remote attestation when ``online`` and there is GPU evidence.

    ``nras_url`` defaults to NRAS v3; for v4 pass ``NRAS_V4_URL`` and an NGC ``nras_service_key``.
    """
    result = verify_report_local(report, nonce, expected_address=expected_address)
    if any(c.name == "GPU evidence present" for c in result.checks):
        return result  # no GPU evidence: nothing to send to NRAS (already a failed check)
    if not online:
        result.skip("NVIDIA NRAS verdict", "offline: NRAS was not contacted")
        return result
    payload = json.loads(report["nvidia_payload"])
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        await check_nras(result, http, payload, nonce, nras_url, jwks_url, service_key=nras_service_key)
    finally:
        if own:
            await http.close()
    return result
