"""User-facing routes besides the proxy: the broker's quote, models, and a user's unsettled fee."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.auth import AuthResult
from zgserve.broker.catalog import Catalog, CatalogModel
from zgserve.broker.core import BrokerCore
from zgserve.broker.errors import AddressMismatch
from zgserve.broker.model_list import ListingContext, model_list
from zgserve.broker.routes.params import path_address
from zgserve.chain.errors import ChainError
from zgserve.common.money import to_wire
from zgserve.common.pricing import Pricing

logger = logging.getLogger(__name__)

_ACK_TTL_S = 10.0  # how long an on-chain read of the TEE acknowledgement is reused
_ACK_READ_S = 5.0  # a slow RPC must not hold /v1/models


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
    """The catalog in the SDK's ``ProviderModelInfo`` shape (see ``zgserve.broker.model_list``)."""
    core = _core(request)
    settings = core.settings
    catalog = core.catalog
    if not settings.models:
        # A provider configured the old way sells one model whose prices and name the
        # admin API may have changed since start-up: list what is billed now.
        svc = core.service
        catalog = Catalog(
            [
                CatalogModel(
                    id=svc.model,
                    pricing=Pricing.flat(svc.input_price, svc.output_price),
                    service_type=svc.service_type,
                )
            ]
        )
    verifier = settings.registration.additional_info.get("TEEVerifier")
    ctx = ListingContext(
        owner=core.provider_address,
        default_max_output_tokens=settings.billing.max_output_tokens,
        verifiability=settings.registration.verifiability,
        tee_attested=await _tee_attested(request, core),
        tee_verifier=verifier if isinstance(verifier, str) else None,
        rate_limits=core.limits.model_limits() if core.limits is not None else {},
    )
    return JSONResponse(model_list(catalog, ctx))


async def _tee_attested(request: Request, core: BrokerCore) -> bool:
    """Whether the owner acknowledged the TEE signer on-chain, re-read at most every few seconds.

    ``/v1/models`` is public and unauthenticated: a cache keeps it from turning each
    call into an RPC read.
    """
    if core.inference is None:
        return False
    now = time.monotonic()
    cached: tuple[float, bool] | None = getattr(request.app.state, "models_tee_attested", None)
    if cached is not None and now - cached[0] < _ACK_TTL_S:
        return cached[1]
    try:
        service = await asyncio.wait_for(core.inference.get_service(core.provider_address), _ACK_READ_S)
        attested = bool(service.tee_signer_acknowledged)
    except (ChainError, TimeoutError) as exc:
        logger.warning("cannot read the on-chain service for /v1/models: %s", type(exc).__name__)
        attested = cached[1] if cached is not None else False
    request.app.state.models_tee_attested = (now, attested)
    return attested


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
