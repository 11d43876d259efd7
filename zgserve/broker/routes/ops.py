"""Operations: liveness (``/health``), readiness (``/ready``) and Prometheus metrics.

``/health`` says the process is up and serving HTTP; it touches nothing else, so a
container manager never restarts a broker for an outage of something it depends on.
``/ready`` says whether a charged request could be served now: the database takes
writes, the chain RPC answers and the verifiable service answers, each checked
concurrently under a short timeout. 200 when all pass, else 503; the body names each
check either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.core import BrokerCore
from zgserve.broker.metrics import CONTENT_TYPE_LATEST

CHECK_TIMEOUT_S = 2.0


async def health(request: Request) -> Response:
    core: BrokerCore | None = getattr(request.app.state, "core", None)
    body: dict[str, Any] = {"status": "ok"}
    if core is not None:
        body |= {"provider": core.provider_address, "model": core.service.model}
    return JSONResponse(body)


async def _database(core: BrokerCore) -> None:
    # Writes (the fee writer's probe, first: its outcome is what admits or refuses charged
    # requests, so a failure here refuses them at once and a pass ends a known outage) and
    # reads (the balance guard, through the engine's pool).
    await core.writer.probe()
    async with core.db.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _chain(core: BrokerCore) -> None:
    if core.chain is None:
        return  # accounts come from elsewhere (embedding, tests): nothing to check
    await core.chain.block_number()


async def _service(core: BrokerCore) -> None:
    url = core.settings.target_url + "/health"
    async with core.http.get(url, timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"answered HTTP {resp.status}")


async def _run_check(check: Callable[[BrokerCore], Awaitable[None]], core: BrokerCore) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(core), CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:  # any failure of a dependency is "not ready", never a 500
        return {"ok": False, "error": _describe(exc)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _describe(exc: BaseException) -> str:
    # The type and the first line only: driver messages run long and may quote the statement.
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


_CHECKS: dict[str, Callable[[BrokerCore], Awaitable[None]]] = {
    "database": _database,
    "chain": _chain,
    "service": _service,
}


async def ready(request: Request) -> Response:
    core: BrokerCore | None = getattr(request.app.state, "core", None)
    if core is None:
        return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
    results = await asyncio.gather(*(_run_check(check, core) for check in _CHECKS.values()))
    checks = dict(zip(_CHECKS, results, strict=True))
    ok = all(r["ok"] for r in results)
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
    )


async def metrics(request: Request) -> Response:
    core: BrokerCore = request.app.state.core
    return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
