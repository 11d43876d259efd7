"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.core import BrokerCore
from zgserve.broker.metrics import CONTENT_TYPE_LATEST


async def health(request: Request) -> Response:
    core: BrokerCore = request.app.state.core
    return JSONResponse({"status": "ok", "provider": core.provider_address, "model": core.service.model})


async def metrics(request: Request) -> Response:
    core: BrokerCore = request.app.state.core
    return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
