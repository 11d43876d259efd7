"""HTTP routes: thin handlers over the proxy, the signature store and the report service.

Completion endpoints are plain ASGI callables, to forward bytes without building
request/response objects per call; errors raised before the response starts are
mapped to OpenAI error JSON by the app's one exception handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zgserve.common.errors import BadRequest, NotFound, PayloadTooLarge, ZgError, error_body
from zgserve.common.signing import SIGNING_ALGO, Signer
from zgserve.service.attestation import AttestationError
from zgserve.service.protocol import Health, SignatureRecord
from zgserve.service.proxy import Answer, ProxiedStream, SigningProxy, parse_request
from zgserve.service.reports import ReportService
from zgserve.service.store import SignatureStore
from zgserve.service.upstream import Upstream, backend_error_body

logger = logging.getLogger(__name__)

_NONCE = re.compile(r"[0-9a-fA-F]{64}")
_EXPOSE = (b"access-control-expose-headers", b"ZG-Res-Key")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class AttestationUnavailable(ZgError):
    status = 503
    code = "attestation_unavailable"
    type = "server_error"


def error_payload(exc: Exception, where: str) -> tuple[int, bytes]:
    """The one mapping of errors to a status and OpenAI error JSON (server errors logged here)."""
    if isinstance(exc, ZgError):
        if exc.status >= 500:
            logger.error("%s -> %d %s", where, exc.status, exc.message)
        return exc.status, json.dumps(exc.body()).encode()
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return exc.status_code, json.dumps(error_body(str(exc.detail), kind, code)).encode()
    logger.error("unhandled error on %s", where, exc_info=exc)
    return 500, json.dumps(error_body("internal error", "server_error", "internal_error")).encode()


async def handle_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for every route but the completion fast path."""
    status, body = error_payload(exc, f"{request.method} {request.url.path}")
    return Response(body, status_code=status, media_type="application/json")


class CompletionFastPath:
    """Sends ``POST`` completions straight to their endpoint, everything else to ``app``.

    The completion endpoints are the hot path: this skips Starlette's middleware
    and routing layers (and their per-message wrappers) for them, while errors are
    still mapped by :func:`error_payload`, the same function Starlette's handler uses.
    """

    def __init__(self, app: ASGIApp, endpoints: dict[str, CompletionEndpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await endpoint(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise  # the status line is out: nothing to map, the server closes the connection
            status, body = error_payload(exc, f"POST {scope['path']}")
            await _send_answer(send, Answer(status, body))


@dataclass
class ServiceRuntime:
    """What the lifespan builds and the routes use (filled in at start-up)."""

    proxy: SigningProxy = field(init=False)
    upstream: Upstream = field(init=False)
    store: SignatureStore = field(init=False)
    reports: ReportService = field(init=False)
    signer: Signer = field(init=False)
    tee_name: str = "unknown"
    max_request_bytes: int = 16 * 1024 * 1024
    retention_s: float = 24 * 3600


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and int(value) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer.body)).encode())]
    if answer.response_id is not None:
        headers += [(b"zg-res-key", answer.response_id.encode()), _EXPOSE]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def _send_stream(receive: Receive, send: Send, stream: ProxiedStream) -> None:
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"zg-res-key", stream.response_id.encode()),
        _EXPOSE,
    ]

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        stream.mark_client_gone()

    watcher = asyncio.create_task(watch_disconnect())
    blocks = stream.blocks()
    ended = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for block in blocks:
            # The signed last block ends the response in the same write as its terminator.
            ended = stream.last_block
            try:
                await send({"type": "http.response.body", "body": block, "more_body": not ended})
            except OSError:  # servers that raise on a gone client instead of ignoring the write
                stream.mark_client_gone()
    finally:
        watcher.cancel()
        await blocks.aclose()
    if not stream.client_gone and not ended:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class CompletionEndpoint:
    """``POST /v1/chat/completions`` and ``POST /v1/completions``: forwarded and signed."""

    def __init__(self, runtime: ServiceRuntime, upstream_path: str) -> None:
        self.runtime = runtime
        self.upstream_path = upstream_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        try:
            body = await _read_body(scope, receive, runtime.max_request_bytes)
        except ClientGone:
            return
        payload = parse_request(body)
        if payload.get("stream"):
            result = await runtime.proxy.open_stream(self.upstream_path, body, payload)
            if isinstance(result, ProxiedStream):
                await _send_stream(receive, send, result)
                return
            await _send_answer(send, result)
        else:
            await _send_answer(send, await runtime.proxy.complete(self.upstream_path, body, payload))


def _check_algo(request: Request) -> None:
    algo = request.query_params.get("signing_algo")
    if algo is not None and algo.lower() != SIGNING_ALGO:
        raise BadRequest(
            f"unsupported signing_algo {algo!r}; this service signs with ecdsa", param="signing_algo"
        )


def completion_endpoints(runtime: ServiceRuntime) -> dict[str, CompletionEndpoint]:
    return {path: CompletionEndpoint(runtime, path) for path in ("/v1/chat/completions", "/v1/completions")}


def build_routes(runtime: ServiceRuntime) -> list[Route]:
    """Every route of the service, served both at the root and under ``/v1``."""

    async def health(request: Request) -> Response:
        body = Health(
            status="ok",
            signing_address=runtime.signer.address,
            tee=runtime.tee_name,
            gpu_evidence=runtime.reports.gpu is not None,
        )
        return Response(body.model_dump_json(), media_type="application/json")

    async def models(request: Request) -> Response:
        status, data = await runtime.upstream.call("GET", "/v1/models")
        if status != 200:
            data = backend_error_body(status, data)
        return Response(data, status_code=status, media_type="application/json")

    async def signature(request: Request) -> Response:
        _check_algo(request)
        response_id = request.path_params["response_id"]
        entry = await runtime.store.get(response_id)
        if entry is None:
            hours = runtime.retention_s / 3600
            raise NotFound(
                f"no signature for response id {response_id!r}: unknown, or older than the retention "
                f"({hours:g} h)",
                code="signature_not_found",
            )
        if not entry.complete:
            raise NotFound(
                f"no signature for response id {response_id!r}: {entry.incomplete_reason}",
                code="response_incomplete",
            )
        record = SignatureRecord(
            text=entry.text or "",
            signature=entry.signature or "",
            signing_address=entry.signing_address or "",
            signing_algo=entry.signing_algo,
        )
        return Response(record.model_dump_json(), media_type="application/json")

    async def attestation_report(request: Request) -> Response:
        _check_algo(request)
        address = request.query_params.get("signing_address")
        if address is not None and address.lower() != runtime.signer.address.lower():
            raise NotFound(f"this service does not sign as {address}", code="unknown_signing_address")
        nonce_hex = request.query_params.get("nonce")
        nonce: bytes | None = None
        if nonce_hex is not None:
            if not _NONCE.fullmatch(nonce_hex):
                raise BadRequest("nonce must be 64 hex characters (32 bytes)", param="nonce")
            nonce = bytes.fromhex(nonce_hex)
        try:
            report: dict[str, Any] = await runtime.reports.report(nonce)
        except AttestationError as exc:
            raise AttestationUnavailable(f"attestation evidence could not be produced: {exc}") from exc
        return JSONResponse(report)

    routes: list[Route] = []
    for prefix in ("", "/v1"):
        routes += [
            Route(prefix + "/health", health, methods=["GET"]),
            Route(prefix + "/signature/{response_id:path}", signature, methods=["GET"]),
            Route(prefix + "/attestation/report", attestation_report, methods=["GET"]),
        ]
    routes.append(Route("/v1/models", models, methods=["GET"]))
    # Also routed here (for 405 on other methods); POSTs are taken earlier by CompletionFastPath.
    routes += [
        Route(path, endpoint, methods=["POST"]) for path, endpoint in completion_endpoints(runtime).items()
    ]
    return routes
