"""The provider's admin API (as in the official docs): service, settlement, users, requests.

Reachable from loopback only, unless ``admin.token`` is configured: then every
admin call needs ``Authorization: Bearer <token>``, from any address. The peer
address is the socket's, never a forwarded header; behind a reverse proxy on the
same host, configure a token.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker import registration
from zgserve.broker.core import BrokerCore
from zgserve.broker.db import repo
from zgserve.broker.errors import AdminForbidden, InvalidJson
from zgserve.chain.errors import AccountNotExists
from zgserve.chain.types import Account
from zgserve.common import money
from zgserve.common.errors import BadRequest, Conflict, NotFound

logger = logging.getLogger(__name__)
_LOOPBACK = ("127.", "::1", "::ffff:127.")


def _core(request: Request) -> BrokerCore:
    core: BrokerCore = request.app.state.core
    return core


def require_admin(request: Request) -> BrokerCore:
    core = _core(request)
    token = core.settings.admin.token
    if token is not None:
        given = request.headers.get("authorization", "")
        expected = "Bearer " + token.get_secret_value()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AdminForbidden("the admin API needs 'Authorization: Bearer <admin token>'")
        return core
    host = request.client.host if request.client else ""
    if not host.startswith(_LOOPBACK):
        raise AdminForbidden("the admin API is served to loopback only (configure admin.token to open it)")
    return core


async def _json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise InvalidJson("the request body is not valid JSON") from None


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
        if value is None:
            return None
        if isinstance(value, float):
            raise ValueError("prices are integers in neuron (or decimal strings)")
        return money.parse(value)


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
    chain = await core.inference.get_service(core.provider_address) if core.inference is not None else None
    return JSONResponse(_service_json(core, chain))


async def post_service(request: Request) -> Response:
    core = require_admin(request)
    try:
        update = ServiceUpdate.model_validate(await _json(request))
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
    logger.warning(
        "service changed through the admin API; put the same values in the config file to keep them"
    )
    return JSONResponse({"outcome": outcome, "service": _service_json(core)})


async def settle(request: Request) -> Response:
    core = require_admin(request)
    body = await _json(request)
    users = body.get("users") if isinstance(body, dict) else None
    if users is None and request.query_params.get("user"):
        users = [request.query_params["user"]]
    if users is not None and (not isinstance(users, list) or not all(isinstance(u, str) for u in users)):
        raise BadRequest("'users' must be a list of addresses", param="users")
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


async def list_users(request: Request) -> Response:
    core = require_admin(request)
    async with core.db.connect() as conn:
        owed = await repo.unsettled_by_user(conn)
        stored = {u.address: u for u in await repo.list_users(conn, offset=0, limit=1_000_000)}
    items = []
    if core.inference is not None:
        for account in await core.inference.get_accounts_by_provider(core.provider_address):
            key = account.user.lower()
            debt = stored[key].debt if key in stored else 0
            items.append(_user_json(key, account, owed.get(key, 0), debt))
    else:
        for key in sorted(set(owed) | set(stored)):
            items.append(_user_json(key, None, owed.get(key, 0), stored[key].debt if key in stored else 0))
    return JSONResponse({"metadata": {"total": len(items)}, "items": items})


async def get_user(request: Request) -> Response:
    core = require_admin(request)
    address = request.path_params["address"].lower()
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


def _bool_param(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false", param=name)


def _int_param(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}]", param=name)
    return int(value)


def _time_param(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time", param=name) from None


async def list_requests(request: Request) -> Response:
    core = require_admin(request)
    q = request.query_params
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc", param="order")
    offset = _int_param(q.get("offset"), "offset", 0, 0, 10**12)
    limit = _int_param(q.get("limit"), "limit", 100, 1, 1000)
    # 'processed' is the official broker's name for the settled flag.
    settled = _bool_param(q.get("settled", q.get("processed")), "settled")
    async with core.db.connect() as conn:
        page = await repo.list_requests(
            conn,
            user=q.get("user"),
            settled=settled,
            since=_time_param(q.get("since"), "since"),
            until=_time_param(q.get("until"), "until"),
            response_id=q.get("responseId"),
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
