"""User-side audit of a provider's settlements: what was taken on-chain is what was used.

A zgserve broker serves each settlement with the receipts it charged and a Merkle
proof of each against the signed ``requestsHash``
(``GET /v1/user/{address}/settlements/{nonce}``). :func:`audit_settlement` checks,
without trusting the broker:

1. the settlement's EIP-712 signature recovers to the provider's settlement signer
   (``teeSignerAddress``), so this is what the contract accepted or would accept;
2. ``totalFee`` equals the sum of the receipts;
3. every receipt's Merkle proof verifies against ``requestsHash``, and the receipts
   rebuild exactly that root (none hidden, none added);
4. every receipt is the user's own, and every request receipt matches a response
   the user holds: same response id, same token counts, ``fee <= input × inputPrice
   + output × outputPrice``, and -- when the user kept the bytes and the service's
   signature -- a valid signature by the service over them;
5. a carry-over receipt (``debt:<nonce>``) equals the unpaid part of that earlier
   settlement, when the caller passes the earlier settlements.

:func:`find_double_charges` checks a user's whole history: no response is charged twice.
The receipt encoding is documented in :mod:`zgserve.broker.settlement.receipts`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from eth_utils.address import to_checksum_address

from zgserve.broker.settlement.receipts import MerkleProof, Receipt, ReceiptTree, verify_proof
from zgserve.chain.eip712 import recover_settlement_signer
from zgserve.chain.types import TEESettlementData
from zgserve.common.signing import verify_exchange


@dataclass(frozen=True)
class HeldResponse:
    """What the user kept of one response: its id (``ZG-Res-Key``) and usage, ideally the bytes.

    With ``request_body``, ``response_body``, ``text`` and ``signature`` (from
    ``/v1/proxy/signature/{id}``) the service's signature is checked too.
    """

    response_id: str
    prompt_tokens: int
    completion_tokens: int
    request_body: bytes | None = None
    response_body: bytes | None = None
    text: str | None = None
    signature: str | None = None

    @classmethod
    def from_exchange(
        cls,
        response_id: str,
        request_body: bytes,
        response_body: bytes,
        *,
        text: str | None = None,
        signature: str | None = None,
    ) -> HeldResponse:
        """From the exact bytes of a (streamed or not) chat completion; usage is read from them."""
        prompt, completion = usage_of(response_body)
        return cls(response_id, prompt, completion, request_body, response_body, text, signature)


def usage_of(body: bytes) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a JSON body or the last SSE event with usage."""
    usage: Any = None
    text = body.decode("utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        usage = json.loads(text).get("usage")
    else:
        for line in text.splitlines():
            if line.startswith("data:") and line[5:].strip().startswith("{"):
                usage = json.loads(line[5:]).get("usage") or usage
    if not isinstance(usage, dict):
        raise ValueError("the response has no usage")
    return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))


@dataclass
class AuditReport:
    """The outcome of one settlement's audit.

    ``failures`` are checks that failed; ``unmatched`` the response ids charged by a
    request receipt that the user holds no answer for (kept apart: the user may simply
    not have kept it, or the provider charged for an answer it never gave); ``verified``
    names what was checked and held.
    """

    failures: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    receipts: int = 0
    total_fee: int = 0

    @property
    def problems(self) -> list[str]:
        """The failures, then one line per unmatched receipt."""
        return self.failures + [f"no response {sid!r} among those held" for sid in self.unmatched]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unmatched


def audit_settlement(
    settlement: Mapping[str, Any],
    held: Mapping[str, HeldResponse],
    *,
    input_price: int,
    output_price: int,
    signer: str | None = None,
    service_signer: str | None = None,
    earlier: Iterable[Mapping[str, Any]] = (),
) -> AuditReport:
    """Audit one settlement as served by the broker (see the module doc).

    ``held`` maps response ids to what the user kept; ``signer`` is the provider's
    ``teeSignerAddress`` read from the chain (else the broker's claim is used and
    noted); ``service_signer`` the verifiable service's address for response signatures.
    """
    report = AuditReport()
    user = str(settlement["user"]).lower()
    total = int(settlement["totalFee"])
    root = bytes.fromhex(str(settlement["requestsHash"]).removeprefix("0x"))
    report.total_fee = total
    receipts = [Receipt.from_json(r) for r in settlement["receipts"]]
    report.receipts = len(receipts)

    _check_signature(settlement, root, total, signer, report)
    _check_tree(settlement, receipts, root, total, report)
    unpaid_by_nonce = {int(s["nonce"]): int(s.get("unpaid") or 0) for s in earlier}
    counts = {"matched": 0, "signed": 0, "carry-over": 0}
    for receipt in receipts:
        if receipt.user.lower() != user:
            report.failures.append(f"receipt {receipt.request_id} belongs to {receipt.user}")
        if receipt.is_carry_over:
            counts["carry-over"] += _check_carry_over(receipt, unpaid_by_nonce, report)
        else:
            for name in _check_request(receipt, held, input_price, output_price, service_signer, report):
                counts[name] += 1
    requests = sum(1 for r in receipts if not r.is_carry_over)
    if counts["matched"]:
        report.verified.append(f"{counts['matched']}/{requests} receipts match held answers")
    if counts["signed"]:
        report.verified.append(f"{counts['signed']}/{requests} answers signed by the service")
    if counts["carry-over"]:
        report.verified.append(f"{counts['carry-over']} carry-overs")
    return report


def _check_tree(
    settlement: Mapping[str, Any], receipts: list[Receipt], root: bytes, total: int, report: AuditReport
) -> None:
    """``totalFee`` is the receipts' sum; every proof verifies; the receipts are exactly the tree."""
    if sum(r.fee for r in receipts) != total:
        report.failures.append(f"totalFee {total} != sum of receipts {sum(r.fee for r in receipts)}")
    else:
        report.verified.append("totalFee = sum of receipts")
    proofs_ok = True
    for raw, receipt in zip(settlement["receipts"], receipts, strict=True):
        if not verify_proof(receipt.leaf(), MerkleProof.from_json(raw["proof"]), root):
            report.failures.append(f"receipt {receipt.request_id}: Merkle proof does not verify")
            proofs_ok = False
    if receipts and proofs_ok:
        report.verified.append(f"{len(receipts)} Merkle proofs")
    try:
        if receipts and ReceiptTree(receipts).root != root:
            report.failures.append("the receipts do not rebuild requestsHash (some are missing or extra)")
        elif receipts:
            report.verified.append("receipts rebuild requestsHash")
    except ValueError as exc:
        report.failures.append(f"receipts: {exc}")


def _check_signature(
    settlement: Mapping[str, Any], root: bytes, total: int, signer: str | None, report: AuditReport
) -> None:
    domain = settlement.get("domain") or {}
    if not domain.get("chainId") or not domain.get("verifyingContract"):
        report.notes.append("no EIP-712 domain given; settlement signature not checked")
        return
    data = TEESettlementData(
        user=to_checksum_address(settlement["user"]),
        provider=to_checksum_address(settlement["provider"]),
        total_fee=total,
        requests_hash=root,
        nonce=int(settlement["nonce"]),
        signature=bytes.fromhex(str(settlement["signature"]).removeprefix("0x")),
    )
    recovered = recover_settlement_signer(
        data, chain_id=int(domain["chainId"]), contract=str(domain["verifyingContract"])
    )
    expected = signer or settlement.get("signer")
    if signer is None:
        report.notes.append("signer taken from the broker's answer; pass the on-chain teeSignerAddress")
    if recovered is None or expected is None or recovered.lower() != str(expected).lower():
        report.failures.append(f"settlement signature recovers to {recovered}, expected {expected}")
    else:
        report.verified.append("settlement signature")


def _check_request(
    r: Receipt,
    held: Mapping[str, HeldResponse],
    input_price: int,
    output_price: int,
    service_signer: str | None,
    report: AuditReport,
) -> list[str]:
    """Match one request receipt with the held answer; what held: ``"matched"``, ``"signed"``."""
    h = held.get(r.signature_id)
    if h is None:
        report.unmatched.append(r.signature_id)
        return []
    failed = len(report.failures)
    if (r.input_tokens, r.output_tokens) != (h.prompt_tokens, h.completion_tokens):
        report.failures.append(
            f"receipt {r.request_id}: tokens {r.input_tokens}/{r.output_tokens},"
            f" response says {h.prompt_tokens}/{h.completion_tokens}"
        )
    expected_fee = r.input_tokens * input_price + r.output_tokens * output_price
    # Below tokens x prices is allowed: a broker never charges above a request's reservation.
    if r.fee > expected_fee:
        report.failures.append(f"receipt {r.request_id}: fee {r.fee} > tokens x prices {expected_fee}")
    held_ok = ["matched"] if len(report.failures) == failed else []
    if service_signer is not None:
        signed = _service_signature(h, service_signer)
        if signed is False:
            report.failures.append(f"response {h.response_id}: the service's signature does not verify")
        elif signed:
            held_ok.append("signed")
    return held_ok


def _service_signature(h: HeldResponse, service_signer: str) -> bool | None:
    """Whether the service's signature covers the held bytes; None when there is nothing to check."""
    if not (h.signature and h.text) or h.request_body is None or h.response_body is None:
        return None
    return verify_exchange(h.request_body, h.response_body, h.text, h.signature, service_signer)


def _check_carry_over(r: Receipt, unpaid_by_nonce: Mapping[int, int], report: AuditReport) -> int:
    """1 when the carry-over equals the earlier settlement's unpaid part, else 0."""
    source = int(r.request_id.split(":", 1)[1])
    if source not in unpaid_by_nonce:
        report.notes.append(f"carry-over {r.request_id}: settlement {source} not given; not checked")
    elif unpaid_by_nonce[source] != r.fee:
        report.failures.append(f"carry-over {r.request_id}: {r.fee} != unpaid {unpaid_by_nonce[source]}")
    else:
        return 1
    return 0


def find_double_charges(settlements: Iterable[Mapping[str, Any]]) -> list[str]:
    """Response ids (or carry-overs) charged by more than one settlement that collected fees."""
    seen: dict[str, str] = {}
    doubles: list[str] = []
    for s in settlements:
        if s.get("status") not in ("success", "partial", "unverified"):
            continue
        for raw in s["receipts"]:
            key = raw["signatureId"] or raw["requestId"]
            if key in seen:
                doubles.append(key)
            seen[key] = str(s["nonce"])
    return doubles


async def fetch_settlements(
    session: aiohttp.ClientSession, broker_url: str, user: str, authorization: str
) -> list[dict[str, Any]]:
    """Every settlement of ``user`` with receipts and proofs, oldest first."""
    headers = {"Authorization": authorization}
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        url = f"{broker_url}/v1/user/{user}/settlements?offset={offset}&limit=100"
        async with session.get(url, headers=headers) as resp:
            resp.raise_for_status()
            page = await resp.json()
        for item in page["items"]:
            async with session.get(
                f"{broker_url}/v1/user/{user}/settlements/{item['nonce']}", headers=headers
            ) as r:
                r.raise_for_status()
                out.append(await r.json())
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return sorted(out, key=lambda s: int(s["nonce"]))
