"""HTTP routes of the settlement engine: admin history, and users' own settlements with proofs.

* ``GET /v1/settlement`` (admin): entries newest first; query ``user``, ``status``,
  ``offset``, ``limit`` (≤ 500).
* ``GET /v1/user/{address}/settlements`` (the user's Bearer token): the user's
  entries, same paging.
* ``GET /v1/user/{address}/settlements/{nonce}``: one entry with every receipt and
  its Merkle proof against ``requestsHash``, plus the EIP-712 domain the
  signature is valid in -- what :mod:`zgserve.client.audit` checks.

Amounts are decimal strings, addresses checksummed, times ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eth_utils.address import is_address, to_checksum_address
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.core import BrokerCore
from zgserve.broker.errors import AddressMismatch
from zgserve.broker.routes.admin import require_admin
from zgserve.broker.settlement import queries
from zgserve.broker.settlement.queries import SettlementRecord
from zgserve.broker.settlement.receipts import ReceiptTree
from zgserve.chain.eip712 import DOMAIN_NAME, DOMAIN_VERSION
from zgserve.common.errors import BadRequest, NotFound
from zgserve.common.money import to_wire

MAX_PAGE = 500


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def settlement_json(r: SettlementRecord, *, provider: str) -> dict[str, Any]:
    return {
        "user": to_checksum_address(r.user),
        "provider": to_checksum_address(provider),
        "nonce": str(r.nonce),
        "totalFee": to_wire(r.total_fee),
        "requestsHash": r.requests_hash,
        "signature": r.signature,
        "trigger": r.trigger,
        "status": r.status,
        "paid": None if r.paid is None else to_wire(r.paid),
        "unpaid": None if r.unpaid is None else to_wire(r.unpaid),
        "receiptCount": r.receipt_count,
        "createdAt": _iso(r.created_at),
        "settledAt": _iso(r.settled_at),
        "txHash": r.tx_hash,
        "blockNumber": r.block_number,
    }


def _address(value: str) -> str:
    if not is_address(value):
        raise BadRequest(f"not an address: {value!r}", param="address")
    return value.lower()


def _int_param(request: Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer", param=name)
    value = int(raw)
    return min(value, maximum) if maximum is not None else value


def _page(request: Request) -> tuple[int, int]:
    return _int_param(request, "offset", 0), _int_param(request, "limit", 100, MAX_PAGE)


def _core(request: Request) -> BrokerCore:
    core: BrokerCore = request.app.state.core
    return core


def _own_address(request: Request, core: BrokerCore) -> str:
    """The path's address, which must be the Bearer token's own."""
    token = core.auth.token({k.lower(): v for k, v in request.headers.items()})
    address = _address(request.path_params["address"])
    if token.user.lower() != address:
        raise AddressMismatch("the token's address does not match the address in the path")
    return address


async def admin_history(request: Request) -> Response:
    core = require_admin(request)
    user = request.query_params.get("user")
    offset, limit = _page(request)
    async with core.db.connect() as conn:
        items, total = await queries.history(
            conn,
            user=_address(user) if user else None,
            status=request.query_params.get("status") or None,
            offset=offset,
            limit=limit,
        )
        debt_users, debt_total = await queries.open_debt_total(conn)
    return JSONResponse(
        {
            "items": [settlement_json(r, provider=core.provider_address) for r in items],
            "total": total,
            "offset": offset,
            "openDebt": {"users": debt_users, "total": to_wire(debt_total)},
        }
    )


async def user_settlements(request: Request) -> Response:
    core = _core(request)
    address = _own_address(request, core)
    offset, limit = _page(request)
    async with core.db.connect() as conn:
        items, total = await queries.history(conn, user=address, offset=offset, limit=limit)
    return JSONResponse(
        {"items": [settlement_json(r, provider=core.provider_address) for r in items], "total": total}
    )


async def user_settlement(request: Request) -> Response:
    core = _core(request)
    address = _own_address(request, core)
    raw_nonce = request.path_params["nonce"]
    if not raw_nonce.isdigit():
        raise BadRequest("nonce must be a decimal integer", param="nonce")
    async with core.db.connect() as conn:
        found = await queries.entry_detail(conn, address, int(raw_nonce))
    if found is None:
        raise NotFound(f"no settlement with nonce {raw_nonce} for {to_checksum_address(address)}")
    record, receipts = found
    body = settlement_json(record, provider=core.provider_address)
    tree = ReceiptTree(receipts)
    body["receipts"] = [r.to_json() | {"proof": tree.proof(i).to_json()} for i, r in enumerate(tree.receipts)]
    body["domain"] = {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": core.chain.config.chain_id if core.chain is not None else None,
        "verifyingContract": core.inference.address if core.inference is not None else None,
    }
    body["signer"] = core.settlement_signer.address
    return JSONResponse(body)


routes = [
    Route("/v1/settlement", admin_history, methods=["GET"]),
    Route("/v1/user/{address}/settlements", user_settlements, methods=["GET"]),
    Route("/v1/user/{address}/settlements/{nonce}", user_settlement, methods=["GET"]),
]
