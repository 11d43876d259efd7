"""A minimal keep-alive HTTP/1.1 client for the completion hot path.

Measured on the reference machine, one aiohttp request costs 150-200 µs of CPU
(its per-read timeout timers alone about 50 µs), more than half of the service's
whole budget per answer (300 µs, signing and storing included). This client does
only what forwarding completions needs, with the request written in one call and
the response parsed by httptools (llhttp):

* a pool of keep-alive connections, reused in LIFO order; a request
  that fails on a reused connection before any response byte is retried once on
  a new one (the backend may have closed it while idle);
* explicit timeouts: connect, and the longest silence while a response is due;
  the silence check is one timer per request that looks at the last read time,
  not a timer re-armed on every read;
* backpressure: the socket stops being read while 1 MiB of body waits unread.

Everything else that talks to the backend (model list, tokenizer) uses the shared
aiohttp session of :class:`zgserve.service.upstream.Upstream`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import cast

import httptools

_HIGH_WATER = 1 << 20


class UpstreamTimeout(TimeoutError):
    """The backend stayed silent longer than the read timeout."""


class ConnectionBroken(ConnectionError):
    """The connection failed; ``response_started`` says whether any response byte had arrived."""

    def __init__(self, message: str, response_started: bool) -> None:
        super().__init__(message)
        self.response_started = response_started


class Response:
    """A response whose body is read incrementally; ``release`` or ``close`` it when done."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.headers_ready: asyncio.Future[None] = conn.loop.create_future()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def at_eof(self) -> bool:
        return self._done and not self._chunks

    # -- fed by the connection ----------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if not self.headers_ready.done():
            if error is not None:
                self.headers_ready.set_exception(error)
            else:
                self.headers_ready.set_result(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the caller -------------------------------------------------

    async def readany(self) -> bytes:
        """All body bytes received and not yet read, or b"" at the end; raises if the body broke off."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # Everything that has arrived, at once: events the backend sent together leave together.
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered -= len(data)
        if self._buffered <= _HIGH_WATER // 2:
            self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body; the connection is released afterwards."""
        parts = []
        try:
            while chunk := await self.readany():
                parts.append(chunk)
        finally:
            self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back to the pool when the body is complete, else close it."""
        self._conn.response_done(self, reusable=self.at_eof and self._error is None)

    def close(self) -> None:
        """Drop the connection (the body is abandoned)."""
        self._conn.response_done(self, reusable=False)
        if not self._done:
            self._finish(ConnectionBroken("response closed by the caller", True))


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.paused = False
        self.last_read = 0.0
        self.keep_alive = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"malformed HTTP from the backend: {exc}", True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        response = self.response
        if response is not None and not response._done:
            started = response.status != 0
            if (
                started
                and "content-length" not in response.headers
                and "transfer-encoding" not in response.headers
            ):
                response._finish()  # a body delimited by the end of the connection
            else:
                response._finish(ConnectionBroken(f"the backend closed the connection ({exc})", started))

    # -- httptools callbacks ------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        # Asked now: llhttp's answer is only meaningful while the message is being parsed.
        self.keep_alive = self.parser.should_keep_alive()
        if not response.headers_ready.done():
            response.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        if self.response is not None:
            self.response._finish()

    # -- requests -------------------------------------------------------------

    def start(self, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        self.response = Response(self)
        self.last_read = self.loop.time()
        self._timer = self.loop.call_at(self.last_read + self.pool.read_timeout_s, self._check_silence)
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self.response

    def _check_silence(self) -> None:
        self._timer = None
        if self.response is None or self.response._done:
            return
        deadline = self.last_read + self.pool.read_timeout_s
        if self.loop.time() >= deadline and not self.paused:
            self._fail(UpstreamTimeout(f"no data from the backend for {self.pool.read_timeout_s:g} s"))
        else:
            self._timer = self.loop.call_at(max(deadline, self.loop.time() + 0.1), self._check_silence)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: BaseException) -> None:
        if self.response is not None:
            self.response._finish(error)
        self.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def response_done(self, response: Response, reusable: bool) -> None:
        if self.response is not response:
            return
        self.response = None
        self._cancel_timer()
        if reusable and not self.closed and self.keep_alive:
            self.parser = httptools.HttpResponseParser(self)
            self.pool._put(self)
        else:
            self.abort()
            self.pool._forget(self)

    def abort(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()


class Http1Pool:
    """Keep-alive connections to one ``host:port``; ``request`` returns a :class:`Response`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        tls: bool = False,
        max_idle: int = 512,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl.create_default_context() if tls else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.loop = asyncio.get_running_loop()
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        lines = [f"Host: {host}:{port}", "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in (extra_headers or {}).items()]
        self._fixed_headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request; returns once the response headers have arrived.

        ``headers`` are per-request extras; names and values must be plain header text
        (the caller builds them, never a client).
        """
        start = f"{method} {path} HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        if headers:
            start += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = start.encode("latin-1") + self._fixed_headers + b"\r\n"
        for attempt in (0, 1):
            conn, reused = await self._get(fresh=attempt == 1)
            response = conn.start(head, body)
            try:
                await response.headers_ready
            except ConnectionBroken as exc:
                conn.response_done(response, reusable=False)
                if reused and not exc.response_started and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.response_done(response, reusable=False)
                raise
            if response.headers.get("content-encoding", "identity") != "identity":
                response.close()
                raise ConnectionBroken("the backend compressed its answer although asked not to", True)
            return response
        raise AssertionError("unreachable")

    async def _get(self, fresh: bool) -> tuple[_Connection, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
            self._open.discard(conn)
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: _Connection(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            ),
            self.connect_timeout_s,
        )
        self._open.add(conn)
        return conn, False

    def _put(self, conn: _Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            self._open.discard(conn)
        else:
            self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)

    async def close(self) -> None:
        for conn in list(self._open) + self._idle:
            conn.abort()
        self._open.clear()
        self._idle.clear()
