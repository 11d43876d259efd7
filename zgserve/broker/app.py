"""``create_app(settings, deps)``: the broker as an ASGI app; everything is built in the lifespan.

Start-up, in order: database (migrations), upstream HTTP session, chain client and
provider wallet, TEE backend (settlement signer and quote), the service's signing
address, on-chain registration (only if something changed), auth/billing/records,
then the settlement engine. Shutdown reverses it and drains the record writer.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zgserve.broker import dashboard, registration
from zgserve.broker.accounts import AccountCache, AccountFetch
from zgserve.broker.auth import Authenticator, TokenVerifier
from zgserve.broker.billing import BalanceGuard
from zgserve.broker.catalog import catalog_from_settings
from zgserve.broker.core import BrokerCore, ServiceState, SettlementFactory, UnsettledReport
from zgserve.broker.db import create_engine, migrate, repo
from zgserve.broker.db.notify import SettledListener
from zgserve.broker.db.sink import sink_for
from zgserve.broker.errors import StorageUnavailable
from zgserve.broker.limits import Limiter, limiter_from_settings
from zgserve.broker.metrics import BrokerMetrics, MetricsGate, MetricsMiddleware, serve_metrics
from zgserve.broker.quote import build_quote
from zgserve.broker.records import RecordWriter
from zgserve.broker.reload import install_sighup
from zgserve.broker.routes import admin, openapi, ops, user
from zgserve.broker.routes.proxy import PREFIX, ProxyApp, send_error
from zgserve.broker.settings import BrokerSettings
from zgserve.broker.shared_admission import SharedBalanceGuard
from zgserve.chain.errors import AccountNotExists
from zgserve.chain.types import Account
from zgserve.common.errors import UpstreamUnavailable, ZgError, error_body
from zgserve.common.http1 import Http1Pool
from zgserve.common.signing import Signer
from zgserve.service.attestation import TeeBackend, get_tee_backend

logger = logging.getLogger(__name__)


@dataclass
class BrokerDeps:
    """Optional pre-built parts (tests, embedding); anything left None is built from settings."""

    chain: Any = None  # an open zgserve.chain.ChainClient
    account_fetch: AccountFetch | None = None  # replaces the chain read of accounts
    tee: TeeBackend | None = None
    settlement_factory: SettlementFactory | None = None
    register: bool | None = None  # overrides settings.registration.enabled
    target_tee_address: str | None = None
    config_file: Path | None = None  # read again on SIGHUP: prices and models change without downtime


def create_app(settings: BrokerSettings, deps: BrokerDeps | None = None) -> Any:
    """The broker ASGI app. Nothing is connected until the lifespan starts."""
    deps = deps or BrokerDeps()
    metrics = BrokerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            core = await _start(settings, deps, metrics, stack)
            listen = settings.metrics.listen_address()
            if listen is not None:
                await stack.enter_async_context(serve_metrics(metrics, *listen))
            app.state.core = core
            proxy.core = core
            if deps.config_file is not None:
                stack.callback(install_sighup(lambda: proxy.core, deps.config_file))
            yield
            logger.info("broker stopping")

    async def on_zg_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ZgError)
        if exc.status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def on_storage_error(request: Request, exc: Exception) -> Response:
        # A database that is down or restarting is a 503 the client may retry, not a 500.
        logger.error("%s %s: database error: %s", request.method, request.url.path, type(exc).__name__)
        return await on_zg_error(request, StorageUnavailable("the broker's database is unavailable"))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # Routing's own refusals (no such route, wrong method: e.g. a CORS preflight to
        # the admin API) in the same error shape as everything else.
        assert isinstance(exc, HTTPException)
        type_, code = _HTTP_ERRORS.get(exc.status_code, ("invalid_request_error", "invalid_request"))
        body = error_body(str(exc.detail), type_, code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal error", "server_error", "internal_error"), status_code=500)

    starlette = Starlette(
        routes=[
            *user.routes,
            *admin.routes,
            *ops.routes,
            *openapi.routes,
            *_settlement_routes(),
            *dashboard.routes(),
        ],
        lifespan=lifespan,
        exception_handlers={
            ZgError: on_zg_error,
            HTTPException: on_http_error,
            SQLAlchemyError: on_storage_error,
            Exception: on_error,
        },
    )
    # A redirect would be a second path to the same handler: every route answers at one path only.
    starlette.router.redirect_slashes = False
    proxy = _LateProxy()

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        # The proxy is the hot path: it bypasses routing and request objects.
        if scope["type"] == "http":
            to_proxy = scope["path"].startswith(PREFIX + "/")
            limits = proxy.core.limits if proxy.core is not None else None
            if limits is not None and scope.get("client"):
                try:
                    await limits.check_ip(scope["client"][0], to_proxy)
                except ZgError as exc:  # refused before any other work
                    await send_error(send, exc, extra=getattr(exc, "headers", None))
                    return
            if to_proxy:
                await proxy(scope, receive, send)
                return
        await starlette(scope, receive, send)

    admin_token = settings.admin.token.get_secret_value() if settings.admin.token else None
    gated = MetricsGate(
        dispatch,
        token=admin_token if settings.metrics.token_required(admin_token is not None) else None,
        served_here=settings.metrics.listen is None,
    )
    inner = MetricsMiddleware(gated, metrics)
    cors = CORSMiddleware(
        inner,
        allow_origins=list(settings.server.allow_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["ZG-Res-Key"],
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # CORS only concerns browsers, which always send Origin; others skip its send wrapper.
        # Only the routes the SDK calls from a browser get it: the admin API and /metrics
        # never do, so no web page can read them, and their preflights are refused.
        if (
            scope["type"] == "http"
            and browser_route(scope["path"])
            and any(name == b"origin" for name, _ in scope["headers"])
        ):
            await cors(scope, receive, send)
        else:
            await inner(scope, receive, send)

    app.state = starlette.state  # type: ignore[attr-defined]  # lets tests reach app.state.core
    return app


_HTTP_ERRORS = {
    404: ("not_found_error", "route_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}
# The user's own routes (the admin API has /v1/user and /v1/user/{address}).
_BROWSER_USER_ROUTE = re.compile(r"/v1/user/[^/]+/(?:unsettledfee|settlements(?:/[^/]+)?)")


def browser_route(path: str) -> bool:
    """True for the routes the SDK calls from a browser, the only ones with CORS headers."""
    return (
        path.startswith(PREFIX + "/")
        or path in ("/v1/quote", "/v1/models")
        or _BROWSER_USER_ROUTE.fullmatch(path) is not None
    )


class _LateProxy:
    """The proxy app, bound to the core once the lifespan has built it."""

    core: BrokerCore | None = None
    _app: ProxyApp | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None or self._app.core is not self.core:
            if self.core is None:
                await send_error(send, UpstreamUnavailable("the broker is starting", code="starting"))
                return
            self._app = ProxyApp(self.core)
        await self._app(scope, receive, send)


async def _start(
    settings: BrokerSettings, deps: BrokerDeps, metrics: BrokerMetrics, stack: contextlib.AsyncExitStack
) -> BrokerCore:
    engine = create_engine(
        settings.database.url,
        sqlite_synchronous=settings.database.sqlite_synchronous,
        pool_size=settings.database.pool_size,
    )
    stack.push_async_callback(engine.dispose)
    await migrate(engine)

    up = settings.upstream
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=up.max_connections, limit_per_host=up.max_connections),
        timeout=aiohttp.ClientTimeout(total=None, connect=up.connect_timeout, sock_read=up.read_timeout),
        auto_decompress=False,  # bytes go to the client exactly as the service signed them
    )
    stack.push_async_callback(http.close)
    upstream = _pool(settings.target_url, settings)
    stack.push_async_callback(upstream.close)
    model_upstreams: dict[str, Http1Pool] = {}
    for entry in settings.models:
        if entry.target_url and entry.target_url not in model_upstreams | {settings.target_url: upstream}:
            model_upstreams[entry.target_url] = _pool(entry.target_url, settings)
            stack.push_async_callback(model_upstreams[entry.target_url].close)

    provider_key = settings.provider_key()
    provider_address = Signer.from_hex(provider_key).address
    chain, inference = deps.chain, None
    if chain is None and deps.account_fetch is None:
        chain = await _open_chain(settings, stack)
    if chain is not None:
        inference = chain.inference(chain.wallet(provider_key))

    tee = deps.tee or get_tee_backend(settings.tee.backend, simulated_key_file=settings.tee.key_file)  # type: ignore[arg-type]
    stack.push_async_callback(tee.close)
    signer = await tee.signing_key("settlement")
    quote = await build_quote(tee, signer)
    logger.info(
        "settlement signer %s (%s)", signer.address, "hardware TEE" if tee.is_hardware else "SIMULATED"
    )

    catalog = catalog_from_settings(settings)
    state = ServiceState(
        url=settings.serving_url,
        model=settings.model,
        service_type=settings.registration.service_type,
        input_price=settings.input_price,
        output_price=settings.output_price,
    )
    register = settings.registration.enabled if deps.register is None else deps.register
    if register and inference is not None:
        state.tee_address = (
            deps.target_tee_address
            or settings.registration.tee_address
            or await registration.fetch_service_signer(http, settings.target_url)
        )
        params = registration.service_params(
            settings,
            state,
            tee_signer=signer.address,
            target_tee_address=state.tee_address,
            catalog=catalog,
        )
        await registration.sync_service(
            inference, provider_address, params, stake=settings.registration.stake
        )

    fetch = deps.account_fetch or _chain_fetch(inference, provider_address)
    accounts = AccountCache(
        fetch, ttl=settings.auth.account_cache_seconds, max_stale=settings.auth.max_stale_seconds
    )
    verifier = TokenVerifier(
        provider_address,
        cache_size=settings.auth.token_cache_size,
        cache_bytes=settings.auth.token_cache_bytes,
    )

    async def load_owed(user_address: str) -> tuple[int, int]:
        try:
            async with engine.connect() as conn:
                return await repo.unsettled_fee(conn, user_address), await repo.user_debt(conn, user_address)
        except SQLAlchemyError as exc:
            logger.error("cannot read unsettled fees: %s", type(exc).__name__)
            raise StorageUnavailable("the broker's database cannot be read") from None

    guard: BalanceGuard | SharedBalanceGuard
    if settings.billing.shared_admission and engine.dialect.name == "postgresql":
        guard = SharedBalanceGuard(
            engine,
            fetch,
            ttl=settings.billing.reservation_ttl_seconds,
            snapshot_ttl=settings.auth.account_cache_seconds,
            min_locked=settings.billing.min_locked_balance,
            budget_requests=settings.billing.admission_budget_requests,
        )
        await guard.start()
        stack.push_async_callback(guard.stop)
    else:
        guard = BalanceGuard(
            load_owed,
            refresh=settings.auth.account_cache_seconds,
            min_locked=settings.billing.min_locked_balance,
        )
    sink = sink_for(engine, sqlite_synchronous=settings.database.sqlite_synchronous)
    writer = RecordWriter(sink, batch=settings.database.commit_batch, retry_s=settings.database.retry_seconds)
    await writer.start()
    stack.push_async_callback(writer.stop)
    async with engine.connect() as conn:
        metrics.unsettled.set(await repo.total_unsettled(conn))

    core = BrokerCore(
        settings=settings,
        provider_address=provider_address,
        db=engine,
        http=http,
        accounts=accounts,
        auth=Authenticator(verifier, accounts),
        guard=guard,
        writer=writer,
        metrics=metrics,
        service=state,
        settlement_signer=signer,
        upstream=upstream,
        catalog=catalog,
        model_upstreams=model_upstreams,
        chain=chain,
        inference=inference,
        quote=quote,
    )
    core.limits = _limiter(settings, provider_address.lower())
    if core.limits is not None:
        await core.limits.start()
        stack.push_async_callback(core.limits.close)
    if engine.dialect.name == "postgresql":
        # Replicas share the database: a settlement by any of them must reach this one's caches.
        listener = SettledListener(settings.database.url, lambda users: core.on_settled(users))
        await listener.start()
        stack.push_async_callback(listener.stop)
    factory = deps.settlement_factory or _default_settlement(core)
    core.settlement = factory(core)
    await core.settlement.start()
    stack.push_async_callback(core.settlement.stop)
    logger.info(
        "broker ready: provider %s, model %s, target %s",
        provider_address,
        settings.model,
        settings.target_url,
    )
    return core


def _limiter(settings: BrokerSettings, provider: str) -> Limiter | None:
    """The limiter, or None when nothing is limited (the hot path then checks nothing)."""
    s = settings.limits
    if not (
        s.max_global_concurrent
        or s.max_per_user_concurrent
        or s.per_user_rpm
        or s.per_user_tpm
        or s.per_user_images_per_minute
        or s.per_ip_proxy_rps
        or s.per_ip_other_rps
        or s.whitelist
    ):
        return None
    return limiter_from_settings(s, provider)


def _pool(url: str, settings: BrokerSettings) -> Http1Pool:
    """Keep-alive connections for completions to the service at ``url``."""
    target, up = urlsplit(url), settings.upstream
    return Http1Pool(
        target.hostname or "127.0.0.1",
        target.port or (443 if target.scheme == "https" else 80),
        connect_timeout_s=up.connect_timeout,
        read_timeout_s=up.read_timeout,
        tls=target.scheme == "https",
        max_idle=up.max_connections,
        extra_headers={k: v.get_secret_value() for k, v in up.headers.items()} or None,
    )


def _settlement_routes() -> list[Any]:
    """The settlement engine's routes, when the engine is installed."""
    try:
        from zgserve.broker.settlement.routes import routes
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("zgserve.broker.settlement"):
            raise
        return []
    return list(routes)


def _default_settlement(core: BrokerCore) -> SettlementFactory:
    """The settlement engine when there is a chain and the engine is installed, else the report."""
    if core.inference is None:
        return UnsettledReport
    try:
        from zgserve.broker.settlement.wiring import settlement_factory
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("zgserve.broker.settlement"):
            raise
        return UnsettledReport
    return settlement_factory


async def _open_chain(settings: BrokerSettings, stack: contextlib.AsyncExitStack) -> Any:
    from zgserve.chain import ChainClient, NetworkConfig

    net = settings.resolved_network()
    config = NetworkConfig(
        rpc_url=net.rpc_url,
        chain_id=net.chain_id,
        ledger=net.ledger_address,
        inference=net.inference_address,
        service_name=net.service_name,
    )
    client = ChainClient(config)
    await client.open()
    stack.push_async_callback(client.close)
    return client


def _chain_fetch(inference: Any, provider: str) -> AccountFetch:
    async def fetch(user_address: str) -> Account | None:
        try:
            account: Account = await inference.get_account(user_address, provider)
        except AccountNotExists:
            return None
        return account

    return fetch
