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

from zgserve.common.body import ClientGone
from zgserve.common.body import header as _header
from zgserve.common.body import read_body as _read_body
from zgserve.common.errors import BadRequest, NotFound, ZgError, error_body
from zgserve.common.headers import OUTPUT_LIMIT, PROMPT_TOKENS, UPSTREAM_MODEL
from zgserve.common.paths import RouteNotFound, canonical_path
from zgserve.common.signing import SIGNING_ALGO, Signer
from zgserve.service.attestation import AttestationError
from zgserve.service.media import media_endpoints
from zgserve.service.outbound import RequestLimits, prepare
from zgserve.service.params import Kind, ParamPolicy
from zgserve.service.protocol import Health, SignatureRecord
from zgserve.service.proxy import RESPONSE_ID, Answer, ProxiedStream, SigningProxy
from zgserve.service.reports import ReportService
from zgserve.service.store import SignatureStore
from zgserve.service.upstream import Upstream, backend_error

logger = logging.getLogger(__name__)

_NONCE = re.compile(r"[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_EXPOSE = (b"access-control-expose-headers", b"ZG-Res-Key, ZG-Prompt-Tokens")
_OUTPUT_LIMIT = OUTPUT_LIMIT.encode()
_UPSTREAM_MODEL = UPSTREAM_MODEL.encode()
_PROMPT_TOKENS = PROMPT_TOKENS.encode()


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
        code = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return exc.status_code, json.dumps(error_body(str(exc.detail), kind, code)).encode()
    logger.error("unhandled error on %s", where, exc_info=exc)
    return 500, json.dumps(error_body("internal error", "server_error", "internal_error")).encode()


async def handle_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for every route but the completion fast path."""
    status, body = error_payload(exc, f"{request.method} {request.url.path}")
    return Response(body, status_code=status, media_type="application/json")


class CompletionFastPath:
    """Refuses non-canonical paths, sends ``POST`` completions straight to their endpoint,
    everything else to ``app``.

    The completion endpoints are the hot path: this skips Starlette's middleware
    and routing layers (and their per-message wrappers) for them, while errors are
    still mapped by :func:`error_payload`, the same function Starlette's handler uses.
    """

    def __init__(self, app: ASGIApp, endpoints: dict[str, ASGIApp]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        if not canonical_path(raw):
            status, body = error_payload(RouteNotFound("no such route"), "path check")
            await _send_answer(send, Answer(status, body))
            return
        endpoint = self.endpoints.get(scope["path"])
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
    policy: ParamPolicy = field(default_factory=ParamPolicy)
    limits: RequestLimits = field(default_factory=RequestLimits)
    retention_s: float = 24 * 3600


async def _send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer.body)).encode())]
    if answer.response_id is not None:
        headers += [(b"zg-res-key", answer.response_id.encode()), _EXPOSE]
    if answer.prompt_tokens is not None:
        headers.append((_PROMPT_TOKENS, str(answer.prompt_tokens).encode()))
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
    if stream.prompt.tokens is not None:
        headers.append((_PROMPT_TOKENS, str(stream.prompt.tokens).encode()))

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

    def __init__(self, runtime: ServiceRuntime, upstream_path: str, kind: Kind) -> None:
        self.runtime = runtime
        self.upstream_path = upstream_path
        self.kind: Kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        try:
            body = await _read_body(scope, receive, runtime.limits.max_request_bytes)
        except ClientGone:
            return
        request = prepare(
            self.kind,
            body,
            policy=runtime.policy,
            limits=runtime.limits,
            output_limit=_header(scope, _OUTPUT_LIMIT),
            upstream_model=_header(scope, _UPSTREAM_MODEL),
        )
        if request.stream:
            result = await runtime.proxy.open_stream(self.upstream_path, body, request)
            if isinstance(result, ProxiedStream):
                await _send_stream(receive, send, result)
                return
            await _send_answer(send, result)
        else:
            await _send_answer(send, await runtime.proxy.complete(self.upstream_path, body, request))


def _query(request: Request, name: str, pattern: re.Pattern[str], expected: str) -> str | None:
    """The one value of query parameter ``name``, or None; 400 when repeated or not ``pattern``."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"query parameter '{name}' is given more than once", param=name)
    if not pattern.fullmatch(values[0]):
        raise BadRequest(f"query parameter '{name}' must be {expected}", param=name)
    return values[0]


_ALGO = re.compile(re.escape(SIGNING_ALGO), re.IGNORECASE)


def _check_algo(request: Request) -> None:
    _query(request, "signing_algo", _ALGO, f"{SIGNING_ALGO!r} (this service signs with it)")


def completion_endpoints(runtime: ServiceRuntime) -> dict[str, ASGIApp]:
    """The raw POST endpoints: completions, then embeddings, images and audio (:mod:`.media`)."""
    endpoints: dict[str, ASGIApp] = {
        "/v1/chat/completions": CompletionEndpoint(runtime, "/v1/chat/completions", "chat"),
        "/v1/completions": CompletionEndpoint(runtime, "/v1/completions", "completions"),
    }
    endpoints.update(media_endpoints(runtime))
    return endpoints


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
            status, data = backend_error(status, data)
        return Response(data, status_code=status, media_type="application/json")

    async def signature(request: Request) -> Response:
        _check_algo(request)
        response_id = request.path_params["response_id"]
        if not RESPONSE_ID.fullmatch(response_id):
            raise BadRequest(
                "a response id is 1 to 128 letters, digits, '_', '.', ':' or '-'", param="response_id"
            )
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
        address = _query(request, "signing_address", _ADDRESS, "an address (0x and 40 hex characters)")
        if address is not None and address.lower() != runtime.signer.address.lower():
            raise NotFound(f"this service does not sign as {address}", code="unknown_signing_address")
        nonce_hex = _query(request, "nonce", _NONCE, "64 hex characters (32 bytes)")
        nonce = bytes.fromhex(nonce_hex) if nonce_hex is not None else None
        try:
            report: dict[str, Any] = await runtime.reports.report(nonce)
        except AttestationError as exc:
            raise AttestationUnavailable(f"attestation evidence could not be produced: {exc}") from exc
        return JSONResponse(report)

    routes: list[Route] = []
    for prefix in ("", "/v1"):
        routes += [
            Route(prefix + "/health", health, methods=["GET"]),
            Route(prefix + "/signature/{response_id}", signature, methods=["GET"]),
            Route(prefix + "/attestation/report", attestation_report, methods=["GET"]),
        ]
    routes.append(Route("/v1/models", models, methods=["GET"]))
    # Also routed here (for 405 on other methods); POSTs are taken earlier by CompletionFastPath.
    routes += [
        Route(path, endpoint, methods=["POST"]) for path, endpoint in completion_endpoints(runtime).items()
    ]
    return routes
