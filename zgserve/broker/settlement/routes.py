"""HTTP routes of the settlement engine: admin history, and users' own settlements with proofs.

* ``GET /v1/settlement`` (admin): entries newest first; query ``user``, ``status``,
  ``offset``, ``limit`` (≤ 500).
* ``GET /v1/user/{address}/settlements`` (the user's Bearer token, checked as the
  proxy checks it: account, generation, revoked keys): the user's entries, same paging.
* ``GET /v1/user/{address}/settlements/{nonce}``: one entry with every receipt and
  its Merkle proof against ``requestsHash``, plus the EIP-712 domain the
  signature is valid in -- what :mod:`zgserve.client.audit` checks.

Amounts are decimal strings, addresses checksummed, times ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eth_utils.address import to_checksum_address
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.core import BrokerCore
from zgserve.broker.routes.admin_access import require_admin
from zgserve.broker.routes.params import MAX_OFFSET, parse_uint, query_address, query_int, query_text
from zgserve.broker.routes.user import authenticate_owner
from zgserve.broker.settlement import queries
from zgserve.broker.settlement.queries import SettlementRecord
from zgserve.broker.settlement.receipts import ReceiptTree
from zgserve.chain.eip712 import DOMAIN_NAME, DOMAIN_VERSION
from zgserve.common.errors import NotFound
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


def _page(request: Request) -> tuple[int, int]:
    return (
        query_int(request, "offset", 0, 0, MAX_OFFSET),
        min(query_int(request, "limit", 100, 0, MAX_OFFSET), MAX_PAGE),  # larger pages are cut, not refused
    )


def _core(request: Request) -> BrokerCore:
    core: BrokerCore = request.app.state.core
    return core


async def admin_history(request: Request) -> Response:
    core = require_admin(request)
    user = query_address(request, "user")
    status = query_text(request, "status", 32)
    offset, limit = _page(request)
    async with core.db.connect() as conn:
        items, total = await queries.history(
            conn,
            user=user,
            status=status,
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
    address, _ = await authenticate_owner(request, core)
    offset, limit = _page(request)
    async with core.db.connect() as conn:
        items, total = await queries.history(conn, user=address, offset=offset, limit=limit)
    return JSONResponse(
        {"items": [settlement_json(r, provider=core.provider_address) for r in items], "total": total}
    )


async def user_settlement(request: Request) -> Response:
    core = _core(request)
    nonce = parse_uint(str(request.path_params["nonce"]), "nonce")  # a uint256 on chain
    address, _ = await authenticate_owner(request, core)
    async with core.db.connect() as conn:
        found = await queries.entry_detail(conn, address, nonce)
    if found is None:
        raise NotFound(f"no settlement with nonce {nonce} for {to_checksum_address(address)}")
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
