"""User-facing routes besides the proxy: the broker's quote, models, and a user's unsettled fee."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.auth import AuthResult
from zgserve.broker.core import BrokerCore
from zgserve.broker.errors import AddressMismatch
from zgserve.broker.routes.params import path_address
from zgserve.common.money import to_wire


def _core(request: Request) -> BrokerCore:
    core: BrokerCore = request.app.state.core
    return core


async def authenticate_owner(request: Request, core: BrokerCore) -> tuple[str, AuthResult]:
    """The path's ``address`` and the request's authentication, which must be that address's.

    The same checks as the proxy (signature, expiry, account, generation, revoked
    key): a revoked API key or an old-generation token reads nothing.
    """
    address = path_address(request)
    auth = await core.auth.authenticate({k.lower(): v for k, v in request.headers.items()})
    if auth.token.user != address:
        raise AddressMismatch("the token's address does not match the address in the path")
    return address, auth


async def quote(request: Request) -> Response:
    """The broker's attestation: the settlement signer bound in ``report_data`` (see ``quote.py``)."""
    return JSONResponse(_core(request).quote)


async def models(request: Request) -> Response:
    core = _core(request)
    svc = core.service
    entry = {
        "id": svc.model,
        "object": "model",
        "owned_by": core.provider_address,
        "pricing": {"inputPrice": to_wire(svc.input_price), "outputPrice": to_wire(svc.output_price)},
    }
    return JSONResponse({"object": "list", "data": [entry]})


async def unsettled_fee(request: Request) -> Response:
    """``{"unsettledFee": "<neuron>"}`` for the token's own address; the SDK sizes top-ups with it."""
    core = _core(request)
    address, _ = await authenticate_owner(request, core)
    fee = await core.guard.unsettled(address)
    return JSONResponse({"unsettledFee": to_wire(fee)})


routes = [
    Route("/v1/quote", quote, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/user/{address}/unsettledfee", unsettled_fee, methods=["GET"]),
]
