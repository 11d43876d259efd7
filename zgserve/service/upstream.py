"""The backend: completions through a lean keep-alive pool, everything else through one
shared aiohttp session; explicit timeouts on both; failures become typed errors.

Request bodies go out as given and response bytes come back unparsed; the caller
decides what to parse. ``Accept-Encoding: identity`` keeps the bytes we hash the
bytes the backend produced.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from zgserve.common.errors import UpstreamError, UpstreamUnavailable, error_body
from zgserve.common.http1 import ConnectionBroken, Http1Pool, Response, UpstreamTimeout

logger = logging.getLogger(__name__)


class Upstream:
    """An OpenAI-compatible backend at ``base_url`` (without ``/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
        connections: int = 512,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        self._prefix = parts.path.rstrip("/")
        self._api_key = api_key
        self.headers: dict[str, str] = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.connect_timeout_s,
            sock_connect=self.connect_timeout_s,
            sock_read=self.read_timeout_s,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=timeout,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),  # a backend's cookies are never sent back
        )
        self._pool = Http1Pool(
            self._host,
            self._port,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            tls=self._tls,
            max_idle=self._connections,
            extra_headers={"Authorization": f"Bearer {self._api_key}"} if self._api_key else None,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (model list, tokenizer, anything off the hot path)."""
        if self._session is None:
            raise RuntimeError("Upstream.start() has not run")
        return self._session

    async def post(self, path: str, body: bytes, *, content_type: str = "application/json") -> Response:
        """POST ``body`` (JSON unless told); the response comes back with its body unread (release it)."""
        if self._pool is None:
            raise RuntimeError("Upstream.start() has not run")
        try:
            return await self._pool.request("POST", self._prefix + path, body, content_type)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, UpstreamTimeout):
                raise UpstreamError(
                    "the model backend did not answer in time", code="upstream_timeout"
                ) from exc
            if isinstance(exc, ConnectionBroken):
                raise UpstreamError(f"the model backend failed before answering: {exc}") from exc
            raise UpstreamUnavailable(
                f"the model backend is unreachable: {exc or type(exc).__name__}"
            ) from exc

    @staticmethod
    async def read(resp: Response) -> bytes:
        """The whole body of ``resp``; failures become UpstreamError."""
        try:
            return await resp.read()
        except UpstreamTimeout as exc:
            raise UpstreamError("the model backend did not finish in time", code="upstream_timeout") from exc
        except OSError as exc:
            raise UpstreamError(f"the model backend's answer broke off: {exc}") from exc

    async def call(self, method: str, path: str) -> tuple[int, bytes]:
        """Status and body of a small request through the shared session."""
        try:
            async with self.session.request(method, self.base_url + path, headers=self.headers) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(f"the model backend is unreachable ({exc.os_error})") from exc
        except TimeoutError as exc:
            raise UpstreamError("the model backend did not answer in time", code="upstream_timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the model backend request failed: {exc}") from exc


# A backend's error text may carry file paths, tracebacks or the request echoed back.
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-@+~]+){2,}[\\/]?")
_TRACE = re.compile(r"Traceback|\bFile \"")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_IDENT = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_MESSAGE = 300
# Statuses that mean the provider's own set-up is wrong (its backend credentials): not the client's doing.
_PROVIDER_SIDE = frozenset({401, 403, 407})


def clean_message(text: str) -> str:
    """``text`` without tracebacks, file paths or control characters, at most ``MAX_MESSAGE`` long."""
    cut = _TRACE.search(text)
    if cut is not None:
        text = text[: cut.start()]
    text = _CONTROL.sub(" ", _PATH.sub("<path>", text)).strip()
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def _detail_message(detail: Any) -> str:
    """FastAPI's ``detail``: a string, or pydantic's list of ``{loc, msg}`` (the input is left out)."""
    if isinstance(detail, str):
        return detail
    parts = []
    for item in detail[:3] if isinstance(detail, list) else []:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc") or [] if p != "body")
            parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
    return "; ".join(parts)


def backend_error(status: int, body: bytes) -> tuple[int, bytes]:
    """The status and OpenAI error JSON to answer for a backend's non-2xx answer.

    A 4xx is the client's request refused by the backend: relayed (422 as 400) with a
    cleaned message and the backend's code when it is a plain identifier. Anything
    else (5xx, 3xx, the backend refusing the provider's credentials) is 502 with a
    generic message: its details are the provider's business and are logged.
    """
    if not 400 <= status < 500 or status in _PROVIDER_SIDE:
        logger.error("backend answered HTTP %d: %s", status, body[:500].decode("utf-8", "replace"))
        message = f"the model backend failed (HTTP {status})"
        return 502, json.dumps(error_body(message, "upstream_error", "upstream_error")).encode()
    data: Any = None
    try:
        data = json.loads(body[:65536]) if len(body) <= 65536 else None
    except (ValueError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    code = param = None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        code, param = error.get("code"), error.get("param")
    elif isinstance(data, dict) and "detail" in data:
        message = _detail_message(data["detail"])
    else:
        message = body[:1000].decode("utf-8", "replace")
    code = code if isinstance(code, str) and _IDENT.fullmatch(code) else f"upstream_{status}"
    param = param if isinstance(param, str) and _IDENT.fullmatch(param) else None
    text = "the model backend refused the request: " + (clean_message(message) or f"HTTP {status}")
    out = 400 if status == 422 else status
    return out, json.dumps(error_body(text, "invalid_request_error", code, param)).encode()
