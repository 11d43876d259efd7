"""``/v1/proxy/*``: the routes of :mod:`zgserve.broker.routes.table`, forwarded to the service.

A raw ASGI handler: bodies are forwarded as bytes in both directions (the service
signs exactly the bytes it received and sent, so nothing here re-serialises), and
the hot path stays free of framework objects.

* charged routes (``POST /chat/completions``, ``POST /completions``): authenticated,
  parsed once within bounds, the output cap decided (:mod:`zgserve.common.output_cap`)
  and reserved by the balance guard, the service told the same limit, metered,
  recorded durably before the response completes; the response carries ``ZG-Res-Key``.
  A request is never billed above what it reserved.
* free routes (signature, attestation report, models): exact paths, passed through
  without authentication (the SDK fetches them anonymously), redirects never followed.
* anything else: refused before authentication or any upstream call.

Completions go through the lean keep-alive HTTP/1.1 pool (:mod:`zgserve.common.http1`,
one per app): aiohttp's per-request overhead was a third of the broker's CPU per
request. Everything else uses the shared aiohttp session.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from zgserve.broker import billing
from zgserve.broker.auth import AuthResult, check_account
from zgserve.broker.billing import Reservation
from zgserve.broker.catalog import CatalogModel
from zgserve.broker.core import BrokerCore
from zgserve.broker.errors import InsufficientBalance, RateLimited
from zgserve.broker.limits import Admission
from zgserve.broker.media import check_model
from zgserve.broker.routes.media import MediaProxy
from zgserve.broker.routes.relay import DROP_RESPONSE, AnswerRelay, Charge, adding_headers
from zgserve.broker.routes.table import PREFIX, Billing, Resolved, resolve
from zgserve.broker.shared_admission import SharedReservation
from zgserve.common import headers as zg_headers
from zgserve.common import jsonsafe
from zgserve.common.body import ClientGone, read_body
from zgserve.common.errors import UpstreamError, UpstreamUnavailable, ZgError
from zgserve.common.http1 import ConnectionBroken, Response, UpstreamTimeout
from zgserve.common.output_cap import output_cap

logger = logging.getLogger(__name__)

__all__ = ["PREFIX", "ProxyApp", "send_error"]

_JSON = "application/json"
_JSON_DEPTH = 64  # deep enough for tool schemas; the parser never sees more
# Never forwarded upstream: hop-by-hop headers, the user's credentials, and what aiohttp sets itself.
_DROP_REQUEST = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "authorization",
        "address",
        "session-token",
        "session-signature",
        "accept-encoding",
        "cookie",
    }
)


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [
        (k.lower(), v) for k, v in upstream.raw_headers if k.decode("latin-1").lower() not in DROP_RESPONSE
    ]


async def send_error(send: Any, exc: ZgError, *, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """The OpenAI error JSON with the error's status."""
    body = json.dumps(exc.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class ProxyApp(AnswerRelay):
    """The ASGI app serving everything under ``/v1/proxy``."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        s = core.settings
        self._target = s.target_url
        self._max_body = s.server.max_body_bytes
        self._cap = s.billing.max_output_tokens
        self._max_choices = s.billing.max_choices
        self._bytes_per_token = s.billing.input_bytes_per_token
        self._extra_headers = {k: v.get_secret_value() for k, v in s.upstream.headers.items()}
        self._prefix = urlsplit(s.target_url).path.rstrip("/")
        self._in_flight = 0  # requests being served; 1 lets the record commit skip the writer thread
        self._idle = s.limits.idle_seconds or None  # a stream's client may read nothing this long
        self._media = MediaProxy(self)  # embeddings, images, audio

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method = scope["method"]
        self._in_flight += 1
        try:
            resolved = resolve(scope)
            if resolved.route.billing is Billing.CHARGED:
                await self._charged(scope, receive, send, resolved)
            else:
                await self._pass(scope, send, resolved)
        except ClientGone:
            return
        except ZgError as exc:
            self._count_rejection(exc)
            if exc.status >= 500:
                logger.warning("%s %s: %s (%s)", method, PREFIX, exc.code, exc.message)
            await send_error(send, exc, extra=exc.headers if isinstance(exc, RateLimited) else None)
        except Exception:
            logger.exception("%s %s failed", method, PREFIX)
            with contextlib.suppress(Exception):  # the response may have started already
                await send_error(send, ZgError("internal error"))
        finally:
            self._in_flight -= 1

    def _count_rejection(self, exc: ZgError) -> None:
        if exc.status in (401, 402, 403):
            self.core.metrics.rejections.labels(exc.code).inc()

    async def _read_body(self, scope: dict[str, Any], receive: Any, limit: int | None = None) -> bytes:
        """The whole body, up to ``limit`` bytes (default ``server.maxBodyBytes``), else 413."""
        return await read_body(scope, receive, limit or self._max_body)

    def _upstream_headers(self, headers: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k not in _DROP_REQUEST}
        out["accept-encoding"] = "identity"  # the client must get the exact bytes the service signed
        out.update(self._extra_headers)
        return out

    async def _pass(self, scope: dict[str, Any], send: Any, resolved: Resolved) -> None:
        """A free route: GET without a body, the service's answer relayed as it is."""
        headers = self._upstream_headers(_headers(scope))
        try:
            upstream = await self.core.http.request(
                "GET",
                self._free_target(scope, resolved) + resolved.target,
                headers=headers,
                allow_redirects=False,
            )
        except TimeoutError:
            self.core.metrics.upstream_errors.labels("timeout").inc()
            raise UpstreamUnavailable("the service did not answer in time", code="upstream_timeout") from None
        except aiohttp.ClientError as exc:
            self.core.metrics.upstream_errors.labels("connect").inc()
            raise UpstreamUnavailable(f"the service is unreachable ({type(exc).__name__})") from None
        try:
            if 300 <= upstream.status < 400:
                # Never followed, never relayed: a redirect would send the client around the table.
                raise UpstreamError(f"the service answered {upstream.status} (a redirect)")
            out = _response_headers(upstream)
            if upstream.content_length is not None:
                out.append((b"content-length", str(upstream.content_length).encode()))
            await send({"type": "http.response.start", "status": upstream.status, "headers": out})
            try:
                async for chunk in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError):
                self.core.metrics.upstream_errors.labels("broken").inc()  # the client sees a cut body
            await send({"type": "http.response.body", "body": b""})
        finally:
            upstream.release()

    def _free_target(self, scope: dict[str, Any], resolved: Resolved) -> str:
        """The service a free route asks: for a signature or an attestation report, the one of the
        ``model`` the SDK names in the query (a catalog model may have its own service);
        otherwise ``targetUrl``."""
        if not resolved.route.upstream.startswith(("/signature", "/attestation")):
            return self._target
        raw: bytes = scope.get("query_string", b"")
        names = parse_qs(raw.decode("latin-1")).get("model") if raw else None
        if not names:
            return self._target
        try:
            model = self.core.catalog.resolve(names[0])
        except ZgError:
            return self._target
        return model.target_url or self._target

    # ---- charged requests -------------------------------------------------------------------

    async def _charged(self, scope: dict[str, Any], receive: Any, send: Any, resolved: Resolved) -> None:
        if resolved.route.media is not None:
            await self._media.handle(scope, receive, send, resolved)
            return
        core = self.core
        auth = await core.auth.authenticate(_headers(scope))
        body = await self._read_body(scope, receive)
        request = jsonsafe.loads_object(body, max_depth=_JSON_DEPTH)
        # The catalog decides the model, its prices and its cap, before anything is reserved.
        model = core.catalog.resolve(request.get("model"))
        check_model(None, model)
        limit = model.max_output_tokens or self._cap
        cap = output_cap(request, limit, max_choices=self._max_choices)
        # Nothing is generated that could not be recorded: refuse while the fee store is down.
        core.writer.ensure_available()
        pricing = model.pricing  # the prices this request is admitted, and billed, with
        estimate = pricing.max_fee(billing.input_estimate(body, self._bytes_per_token), cap.total)
        user = auth.token.user
        limits = core.limits
        # Limits before the reservation: a refused request never holds a user's balance.
        admission = await limits.admit(user) if limits is not None else None
        ctx: Charge | None = None
        try:
            if admission is not None and admission.headers:
                send = adding_headers(send, admission.headers)
            # Whitelisted (monitoring) traffic is served but never reserved, charged or recorded.
            free = limits is not None and limits.whitelisted(user)
            reservation = None if free else await self._reserve(auth, estimate)
            try:
                upstream = await self._post(model, limit, resolved.target, body)
                try:
                    name = (
                        str(request["model"]) if model.is_wildcard else model.id
                    )  # the name asked for, under "*"
                    ctx = Charge(user, resolved.rest, request, name, pricing, reservation)
                    ctx.prompt_tokens = zg_headers.parse_count(upstream.headers.get(zg_headers.PROMPT_TOKENS))
                    if upstream.status != 200:
                        # Nothing is charged for a failed call.
                        core.metrics.upstream_errors.labels(f"status_{upstream.status}").inc()
                        await self._relay_error(send, upstream)
                    elif upstream.content_type.startswith("text/event-stream"):
                        await self._stream(receive, send, upstream, ctx)
                    else:
                        await self._whole(send, upstream, ctx)
                finally:
                    if upstream.at_eof:
                        upstream.release()  # back to the pool
                    else:
                        upstream.close()  # abandoned mid-body: the service stops generating
            finally:
                if reservation is not None:
                    reservation.release()  # no-op once charged
        finally:
            if admission is not None:
                await self._end_admission(admission, user, ctx.tokens if ctx is not None else 0)

    async def _end_admission(self, admission: Admission, user: str, tokens: int) -> None:
        """The slot back (always: errors, disconnects) and the answer's tokens counted."""
        limits = self.core.limits
        assert limits is not None
        try:
            await limits.end(admission, user, tokens)
        except ZgError as exc:
            # The answer is out already; a slot not released lapses by its lease time.
            logger.warning("limits not updated after a request: %s", exc.message)

    async def _reserve(self, auth: AuthResult, estimate: int) -> Reservation | SharedReservation:
        try:
            return await self.core.guard.reserve(auth.token.user, auth.account, estimate)
        except InsufficientBalance:
            # The cached balance may predate a top-up: read the chain once more before refusing.
            cached = await self.core.accounts.get(auth.token.user, fresh=True)
            account = check_account(auth.token, cached.account)
            return await self.core.guard.reserve(auth.token.user, account, estimate, fresh=True)

    async def _post(
        self, model: CatalogModel, limit: int, target: str, body: bytes, content_type: str = _JSON
    ) -> Response:
        """POST a request through the model's keep-alive pool (the hot path)."""
        pool, prefix = self.core.upstream, self._prefix
        if model.target_url is not None:
            pool = self.core.model_upstreams.get(model.target_url, pool)
            prefix = urlsplit(model.target_url).path.rstrip("/")
        # The service is told the per-answer limit reserved for, and the backend's model name.
        headers = {zg_headers.OUTPUT_LIMIT: str(limit)} if limit else {}
        if model.upstream_model is not None:
            headers[zg_headers.UPSTREAM_MODEL] = model.upstream_model
        try:
            return await pool.request("POST", prefix + target, body, content_type, headers)
        except UpstreamTimeout:
            self.core.metrics.upstream_errors.labels("timeout").inc()
            raise UpstreamUnavailable("the service did not answer in time", code="upstream_timeout") from None
        except ConnectionBroken:
            raise self._broken() from None
        except (OSError, TimeoutError) as exc:
            self.core.metrics.upstream_errors.labels("connect").inc()
            raise UpstreamUnavailable(f"the service is unreachable ({type(exc).__name__})") from None
