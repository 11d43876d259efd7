"""The provider's admin API (as in the official docs): service, settlement, users, requests.

Who may call it is decided in :mod:`zgserve.broker.routes.admin_access` (loopback or the
admin token, never another site), shared with the settlement routes and the dashboard.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker import registration
from zgserve.broker.core import BrokerCore
from zgserve.broker.db import repo
from zgserve.broker.routes.admin_access import require_admin
from zgserve.broker.routes.params import (
    MAX_OFFSET,
    parse_address,
    path_address,
    query_address,
    query_bool,
    query_int,
    query_text,
    query_time,
    read_json,
)
from zgserve.chain.errors import AccountNotExists, ServiceNotExist
from zgserve.chain.types import Account
from zgserve.common import money
from zgserve.common.errors import BadRequest, Conflict, NotFound

logger = logging.getLogger(__name__)
_AMOUNT = re.compile(r"[0-9]{1,78}")
MAX_UINT256 = 2**256 - 1
MAX_SETTLE_USERS = 10_000


async def _json(request: Request, core: BrokerCore) -> Any:
    return await read_json(request, core.settings.server.max_body_bytes)


class ServiceUpdate(BaseModel):
    """Body of ``POST /v1/service`` (official field names)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    url: str | None = Field(default=None, alias="URL")
    input_price: int | None = Field(default=None, alias="inputPrice")
    output_price: int | None = Field(default=None, alias="outputPrice")
    type: Literal["chatbot", "text-to-image", "image-editing", "speech-to-text"] | None = Field(
        default=None, alias="Type"
    )
    name: str | None = Field(default=None, alias="Name")
    model: str | None = Field(default=None, alias="Model")

    @field_validator("input_price", "output_price", mode="before")
    @classmethod
    def _neuron(cls, value: Any) -> Any:
        # Only ValueError becomes a 400 in pydantic; anything else here would be a 500.
        if value is None:
            return None
        if isinstance(value, str) and _AMOUNT.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT256:
            raise ValueError("prices are integers in neuron (or decimal strings of ASCII digits)")
        return value


def _service_json(core: BrokerCore, chain: Any = None) -> dict[str, Any]:
    svc = core.service
    out: dict[str, Any] = {
        "provider": core.provider_address,
        "type": svc.service_type,
        "url": svc.url,
        "model": svc.model,
        "verifiability": core.settings.registration.verifiability,
        "inputPrice": money.to_wire(svc.input_price),
        "outputPrice": money.to_wire(svc.output_price),
        "targetUrl": core.settings.target_url,
        "targetTeeAddress": svc.tee_address,
        "teeSignerAddress": core.settlement_signer.address,
        # What the quote says of the TEE: a simulated backend's signer key is not hardware-bound.
        "tee": {"backend": core.quote.get("tee"), "simulated": bool(core.quote.get("simulated", True))},
    }
    if chain is not None:
        out["onChain"] = {
            "url": chain.url,
            "model": chain.model,
            "inputPrice": money.to_wire(chain.input_price),
            "outputPrice": money.to_wire(chain.output_price),
            "additionalInfo": chain.additional_info,
            "teeSignerAddress": chain.tee_signer_address,
            "teeSignerAcknowledged": chain.tee_signer_acknowledged,
            "updatedAt": chain.updated_at,
        }
    return out


async def get_service(request: Request) -> Response:
    core = require_admin(request)
    chain = None
    if core.inference is not None:
        try:
            chain = await core.inference.get_service(core.provider_address)
        except ServiceNotExist:  # not registered (yet): the answer says so, it is no error
            chain = None
    return JSONResponse(_service_json(core, chain))


async def post_service(request: Request) -> Response:
    core = require_admin(request)
    try:
        update = ServiceUpdate.model_validate(await _json(request, core))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(
            f"{'.'.join(map(str, first['loc']))}: {first['msg']}", param=str(first["loc"][0])
        ) from None
    svc = core.service
    new = dict(
        url=(update.url or svc.url).rstrip("/"),
        model=update.model or svc.model,
        service_type=update.type or svc.service_type,
        input_price=svc.input_price if update.input_price is None else update.input_price,
        output_price=svc.output_price if update.output_price is None else update.output_price,
    )
    outcome = "unchanged"
    if core.inference is not None and svc.tee_address:
        candidate = type(svc)(tee_address=svc.tee_address, **new)  # type: ignore[arg-type]
        params = registration.service_params(
            core.settings,
            candidate,
            tee_signer=core.settlement_signer.address,
            target_tee_address=svc.tee_address,
        )
        outcome = await registration.sync_service(
            core.inference, core.provider_address, params, stake=core.settings.registration.stake
        )
    for key, value in new.items():
        setattr(svc, key, value)
    if len(core.catalog) == 1:
        # One model: its prices are the service's; billing follows at once. Requests already
        # admitted keep the prices they were admitted with.
        only = core.catalog.default
        pricing = replace(only.pricing, input_price=svc.input_price, output_price=svc.output_price)
        core.catalog = core.catalog.with_pricing(only.id, pricing)
    logger.warning(
        "service changed through the admin API; put the same values in the config file to keep them"
    )
    return JSONResponse({"outcome": outcome, "service": _service_json(core)})


async def settle(request: Request) -> Response:
    core = require_admin(request)
    body = await _json(request, core)
    raw_users = body.get("users") if isinstance(body, dict) else None
    users: list[str] | None = None
    if raw_users is not None:
        if not isinstance(raw_users, list) or len(raw_users) > MAX_SETTLE_USERS:
            raise BadRequest(f"'users' must be a list of up to {MAX_SETTLE_USERS} addresses", param="users")
        if not all(isinstance(u, str) for u in raw_users):
            raise BadRequest("'users' must be a list of addresses", param="users")
        users = [parse_address(u, "users") for u in raw_users]
    elif (user := query_address(request, "user")) is not None:
        users = [user]
    if core.settlement is None:
        raise Conflict("no settlement engine")
    return JSONResponse(await core.settlement.settle(users))


def _user_json(address: str, account: Account | None, unsettled: int, debt: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "user": address,
        "unsettledFee": money.to_wire(unsettled),
        "debt": money.to_wire(debt),
    }
    if account is not None:
        out.update(
            user=account.user,
            balance=money.to_wire(account.balance),
            pendingRefund=money.to_wire(account.pending_refund),
            lockBalance=money.to_wire(account.balance - account.pending_refund),
            nonce=str(account.nonce),
            generation=str(account.generation),
            acknowledged=account.acknowledged,
            revokedBitmap=str(account.revoked_bitmap),
            refunds=[
                {"index": r.index, "amount": money.to_wire(r.amount), "createdAt": r.created_at}
                for r in account.live_refunds
            ],
        )
    return out


@dataclass(frozen=True, slots=True)
class UserLedger:
    """One user as the admin API shows them: sub-account (None without a chain), fees owed, debt."""

    address: str
    account: Account | None
    unsettled: int
    debt: int


async def load_users(core: BrokerCore) -> list[UserLedger]:
    """Every sub-account of this provider (or, without a chain, every user with records).

    The one query behind ``GET /v1/user`` and the dashboard's users and backlog.
    """
    async with core.db.connect() as conn:
        owed = await repo.unsettled_by_user(conn)
        stored = {u.address: u for u in await repo.list_users(conn, offset=0, limit=1_000_000)}
    if core.inference is not None:
        return [
            UserLedger(key, account, owed.get(key, 0), stored[key].debt if key in stored else 0)
            for account in await core.inference.get_accounts_by_provider(core.provider_address)
            for key in [account.user.lower()]
        ]
    return [
        UserLedger(key, None, owed.get(key, 0), stored[key].debt if key in stored else 0)
        for key in sorted(set(owed) | set(stored))
    ]


async def list_users(request: Request) -> Response:
    core = require_admin(request)
    items = [_user_json(u.address, u.account, u.unsettled, u.debt) for u in await load_users(core)]
    return JSONResponse({"metadata": {"total": len(items)}, "items": items})


async def get_user(request: Request) -> Response:
    core = require_admin(request)
    address = path_address(request)
    account = None
    if core.inference is not None:
        try:
            account = await core.inference.get_account(address, core.provider_address)
        except AccountNotExists:
            account = None
    async with core.db.connect() as conn:
        unsettled = await repo.unsettled_fee(conn, address)
        debt = await repo.user_debt(conn, address)
    if account is None and unsettled == 0 and debt == 0:
        raise NotFound(f"no account or records for {address}")
    return JSONResponse(_user_json(address, account, unsettled, debt))


async def list_requests(request: Request) -> Response:
    core = require_admin(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc", param="order")
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    limit = query_int(request, "limit", 100, 1, 1000)
    # 'processed' is the official broker's name for the settled flag.
    settled = query_bool(request, "settled", "processed")
    user = query_address(request, "user")
    since, until = query_time(request, "since"), query_time(request, "until")
    response_id = query_text(request, "responseId")
    async with core.db.connect() as conn:
        page = await repo.list_requests(
            conn,
            user=user,
            settled=settled,
            since=since,
            until=until,
            response_id=response_id,
            offset=offset,
            limit=limit,
            order=order,  # type: ignore[arg-type]
        )
    items = [
        {
            "id": r.id,
            "requestId": r.request_id,
            "user": r.user,
            "model": r.model,
            "endpoint": r.endpoint,
            "stream": r.stream,
            "inputTokens": r.input_tokens,
            "outputTokens": r.output_tokens,
            "inputPrice": money.to_wire(r.input_price),
            "outputPrice": money.to_wire(r.output_price),
            "fee": money.to_wire(r.fee),
            "responseId": r.response_id,
            "status": r.status,
            "createdAt": r.created_at.isoformat(),
            "settled": r.settled,
            "settlementId": r.settlement_id,
            "settlementNonce": None if r.settlement_nonce is None else str(r.settlement_nonce),
        }
        for r in page.items
    ]
    return JSONResponse(
        {
            "metadata": {"total": page.total, "offset": offset, "limit": limit},
            "items": items,
            "fee": str(page.fee),
        }
    )


async def sync_accounts(request: Request) -> Response:
    """Read every sub-account of this provider from the chain into the users table."""
    core = require_admin(request)
    if core.inference is None:
        raise Conflict("no chain connection")
    accounts = await core.inference.get_accounts_by_provider(core.provider_address)
    async with core.db.begin() as conn:
        for a in accounts:
            await repo.save_chain_state(
                conn,
                a.user,
                balance=a.balance,
                pending_refund=a.pending_refund,
                chain_nonce=a.nonce,
                generation=a.generation,
                acknowledged=a.acknowledged,
            )
    core.on_settled(None)
    return JSONResponse({"synced": len(accounts)})


routes = [
    Route("/v1/service", get_service, methods=["GET"]),
    Route("/v1/service", post_service, methods=["POST"]),
    Route("/v1/settle", settle, methods=["POST"]),
    Route("/v1/user", list_users, methods=["GET"]),
    Route("/v1/user/{address}", get_user, methods=["GET"]),
    Route("/v1/request", list_requests, methods=["GET"]),
    Route("/v1/sync-account", sync_accounts, methods=["POST"]),
]
