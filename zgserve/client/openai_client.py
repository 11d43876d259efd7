"""OpenAI clients for a 0G provider, recording the exact bytes of every exchange.

The provider's OpenAI base URL is ``Service.url + "/v1/proxy"``; the ``app-sk-``
token goes in as the ``api_key`` (so the client sends ``Authorization: Bearer
app-sk-...``). To verify a response a user needs the bytes that went out and came
back, not objects re-serialised by the ``openai`` package: :class:`ExchangeRecorder`
is an HTTP transport that keeps them, streamed or not, with the chat id
(``ZG-Res-Key`` header, else the body's ``id`` or the first SSE event's ``id``).
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import httpx2
import openai

from zgserve.common.sse import SSEParser

PROXY_PATH = "/v1/proxy"
CHAT_ID_HEADER = "ZG-Res-Key"
DEFAULT_TIMEOUT_S = 120.0
_SSE_DONE = b"data: [DONE]"


def proxy_base_url(service_url: str) -> str:
    """The OpenAI base URL of a provider whose on-chain ``url`` is ``service_url``."""
    return service_url.rstrip("/") + PROXY_PATH


@dataclass
class Exchange:
    """One HTTP request and its response, as bytes on the wire (after transfer decoding)."""

    method: str
    url: str
    request_body: bytes
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    complete: bool = False  # the whole response body was read

    @property
    def streamed(self) -> bool:
        return self.response_headers.get("content-type", "").startswith("text/event-stream")

    @property
    def chat_id(self) -> str | None:
        """``ZG-Res-Key``, else the JSON body's ``id``, else the first SSE event's ``id``."""
        header = self.response_headers.get(CHAT_ID_HEADER.lower())
        if header:
            return header
        if self.streamed:
            return first_sse_id(self.response_body)
        try:
            body = json.loads(self.response_body)
        except ValueError:
            return None
        value = body.get("id") if isinstance(body, dict) else None
        return value if isinstance(value, str) else None


def first_sse_id(body: bytes) -> str | None:
    """The ``id`` field of the first SSE ``data:`` event holding a JSON object with one."""
    parser = SSEParser()
    events = parser.feed(body)
    last = parser.close()
    for event in [*events, *([last] if last is not None else [])]:
        if event.data is None:
            continue
        if event.is_done:
            return None
        try:
            payload = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("id"), str):
            return str(payload["id"])
    return None


def _decoded(headers: dict[str, str], body: bytes) -> bytes:
    """Undo a ``Content-Encoding`` the server applied despite ``Accept-Encoding: identity``."""
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class ExchangeRecorder:
    """Keeps the last ``keep`` exchanges made through the clients that use it."""

    def __init__(self, keep: int = 64) -> None:
        self._exchanges: deque[Exchange] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def _add(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    @property
    def last(self) -> Exchange:
        with self._lock:
            if not self._exchanges:
                raise LookupError("no exchange recorded yet")
            return self._exchanges[-1]

    def find(self, chat_id: str) -> Exchange | None:
        """The most recent exchange whose chat id is ``chat_id``."""
        for exchange in reversed(self.exchanges):
            if exchange.chat_id == chat_id:
                return exchange
        return None

    def transport(self, inner: httpx2.BaseTransport | None = None) -> httpx2.BaseTransport:
        return _RecordingTransport(self, inner or httpx2.HTTPTransport())

    def async_transport(self, inner: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncBaseTransport:
        return _AsyncRecordingTransport(self, inner or httpx2.AsyncHTTPTransport())


def _start(recorder: ExchangeRecorder, request: httpx2.Request, body: bytes) -> Exchange:
    exchange = Exchange(method=request.method, url=str(request.url), request_body=body)
    recorder._add(exchange)
    return exchange


def _finish_headers(exchange: Exchange, response: httpx2.Response) -> None:
    exchange.status = response.status_code
    exchange.response_headers = {k.lower(): v for k, v in response.headers.items()}


def _finish_body(exchange: Exchange, chunks: list[bytes], complete: bool) -> None:
    exchange.response_body = _decoded(exchange.response_headers, b"".join(chunks))
    exchange.complete = complete


def _looks_finished(chunks: list[bytes]) -> bool:
    # An SSE body that already holds its [DONE] event ends almost at once: reading
    # to EOF then is cheap, whereas draining a stream the caller abandoned is not.
    tail = b"".join(chunks[-2:]).rstrip()
    return tail.endswith(_SSE_DONE)


class _RecordingStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._iter: Iterator[bytes] | None = None
        self._exchange = exchange
        self._chunks: list[bytes] = []
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        self._iter = iter(self._inner)
        for chunk in self._iter:
            self._chunks.append(chunk)
            yield chunk
        self._done = True

    def close(self) -> None:
        if not self._done and self._iter is not None and _looks_finished(self._chunks):
            self._chunks.extend(self._iter)
            self._done = True
        _finish_body(self._exchange, self._chunks, self._done)
        self._inner.close()


class _AsyncRecordingStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._iter: AsyncIterator[bytes] | None = None
        self._exchange = exchange
        self._chunks: list[bytes] = []
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._iter = aiter(self._inner)
        async for chunk in self._iter:
            self._chunks.append(chunk)
            yield chunk
        self._done = True

    async def aclose(self) -> None:
        if not self._done and self._iter is not None and _looks_finished(self._chunks):
            self._chunks.extend([chunk async for chunk in self._iter])
            self._done = True
        _finish_body(self._exchange, self._chunks, self._done)
        await self._inner.aclose()


class _RecordingTransport(httpx2.BaseTransport):
    def __init__(self, recorder: ExchangeRecorder, inner: httpx2.BaseTransport) -> None:
        self._recorder = recorder
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        exchange = _start(self._recorder, request, request.read())
        response = self._inner.handle_request(request)
        _finish_headers(exchange, response)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_RecordingStream(response.stream, exchange),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class _AsyncRecordingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, recorder: ExchangeRecorder, inner: httpx2.AsyncBaseTransport) -> None:
        self._recorder = recorder
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        exchange = _start(self._recorder, request, await request.aread())
        response = await self._inner.handle_async_request(request)
        _finish_headers(exchange, response)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_AsyncRecordingStream(response.stream, exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


# Servers must send the body bytes they signed; asking for no compression keeps
# the recorded bytes equal to those without any re-encoding on our side.
_DEFAULT_HEADERS = {"Accept-Encoding": "identity"}


def openai_client(
    service_url: str,
    api_key: str | Callable[[], str],
    *,
    recorder: ExchangeRecorder | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_retries: int = 2,
) -> openai.OpenAI:
    """An ``openai.OpenAI`` for the provider at ``service_url`` (its on-chain url).

    ``api_key`` is an ``app-sk-...`` token, or a function returning one (used for
    ephemeral tokens that are renewed before they expire).
    """
    http_client = httpx2.Client(
        transport=recorder.transport() if recorder is not None else None,
        timeout=httpx2.Timeout(timeout, connect=10.0),
    )
    return openai.OpenAI(
        api_key=api_key,
        base_url=proxy_base_url(service_url),
        http_client=http_client,
        max_retries=max_retries,
        default_headers=_DEFAULT_HEADERS,
    )


def async_openai_client(
    service_url: str,
    api_key: str | Callable[[], Awaitable[str]],
    *,
    recorder: ExchangeRecorder | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_retries: int = 2,
) -> openai.AsyncOpenAI:
    """The ``openai.AsyncOpenAI`` counterpart of :func:`openai_client`."""
    http_client = httpx2.AsyncClient(
        transport=recorder.async_transport() if recorder is not None else None,
        timeout=httpx2.Timeout(timeout, connect=10.0),
    )
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=proxy_base_url(service_url),
        http_client=http_client,
        max_retries=max_retries,
        default_headers=_DEFAULT_HEADERS,
    )
