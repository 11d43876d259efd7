"""Prometheus metrics of one broker app, in its own registry (no process-global state).

``/metrics`` shows fees and users' activity, so :class:`MetricsGate` decides who
reaches it on the main port: anyone (the default, for a scraper on a private
network), only holders of the admin token (``metrics.requireToken``), or nobody
when it is served on a port of its own (``metrics.listen``, see
:func:`serve_metrics`). It never gets CORS headers, so no web page can read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from zgserve.common.errors import Forbidden, NotFound, ZgError

__all__ = [
    "CONTENT_TYPE_LATEST",
    "METRICS_PATH",
    "BrokerMetrics",
    "MetricsGate",
    "MetricsMiddleware",
    "route_label",
    "serve_metrics",
]

METRICS_PATH = "/metrics"

_CHARGED = {"/v1/proxy/chat/completions", "/v1/proxy/completions"}
_FIXED = {
    "/v1/quote",
    "/v1/models",
    "/v1/service",
    "/v1/settle",
    "/v1/user",
    "/v1/request",
    "/v1/sync-account",
    "/v1/settlement",
    "/v1/settlement/transactions",
    "/v1/earnings",
    "/v1/traffic",
    "/v1/backlog",
    "/v1/wallet",
    "/dashboard",
    "/health",
    "/metrics",
}


def route_label(path: str) -> str:
    """A bounded label for a path: templates instead of addresses and ids."""
    if path in _CHARGED or path in _FIXED:
        return path
    if path.startswith("/dashboard/"):
        return "/dashboard/static"
    if path.startswith("/v1/proxy/signature/"):
        return "/v1/proxy/signature/{id}"
    if path.startswith("/v1/proxy/"):
        return "/v1/proxy/attestation/report" if path == "/v1/proxy/attestation/report" else "/v1/proxy/*"
    if path.startswith("/v1/user/"):
        if path.endswith("/unsettledfee"):
            return "/v1/user/{address}/unsettledfee"
        if "/settlements" in path:
            return "/v1/user/{address}/settlements"
        return "/v1/user/{address}"
    return "other"


class BrokerMetrics:
    """Request counts and latency by route and status, fees, unsettled total, rejections, upstream errors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("zgbroker_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "zgbroker_request_duration_seconds",
            "Time to the end of the response",
            ["route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.fees = Counter("zgbroker_fees_charged_neuron", "Fees recorded, in neuron", registry=r)
        self.charged = Counter("zgbroker_charged_requests", "Requests recorded", ["status"], registry=r)
        self.unsettled = Gauge(
            "zgbroker_unsettled_neuron", "Recorded fees not yet settled, in neuron", registry=r
        )
        self.rejections = Counter("zgbroker_auth_rejections", "Requests refused", ["reason"], registry=r)
        self.upstream_errors = Counter("zgbroker_upstream_errors", "Upstream failures", ["kind"], registry=r)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP response by route template and status."""

    def __init__(self, app: Any, metrics: BrokerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            key = (route_label(scope["path"]), status)
            children = self._children.get(key)
            if children is None:
                m = self.metrics
                children = (m.requests.labels(key[0], str(status)), m.latency.labels(key[0], str(status)))
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


class MetricsGate:
    """Pure ASGI: lets a request reach ``/metrics`` on the main port only if the settings allow it."""

    def __init__(self, app: Any, *, token: str | None = None, served_here: bool = True) -> None:
        self.app = app
        self._expected = None if token is None else ("Bearer " + token).encode()
        self._served_here = served_here

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == METRICS_PATH:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_error(send, refusal)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Any) -> ZgError | None:
        if not self._served_here:
            return NotFound("metrics are served on their own port (metrics.listen)")
        if self._expected is not None:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                return Forbidden(
                    "/metrics needs 'Authorization: Bearer <admin token>'", code="admin_forbidden"
                )
        return None


async def _send_error(send: Any, exc: ZgError) -> None:
    body = json.dumps(exc.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serve_metrics(metrics: BrokerMetrics, host: str, port: int) -> Any:
    """Serve ``metrics`` on ``host:port`` (a thread of prometheus_client's) until the block ends."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.shutdown)  # waits for its poll loop (<= 0.5 s)
        server.server_close()
        thread.join(timeout=5)
