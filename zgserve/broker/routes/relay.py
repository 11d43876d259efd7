"""Relaying the service's answer for a charged request: whole, streamed, or an error; and the fee
record, committed before the answer's last bytes leave.

:class:`AnswerRelay` is the half of :class:`~zgserve.broker.routes.proxy.ProxyApp` that runs
once the service has answered: it meters the signed bytes as they pass (usage, content
events, the response id), charges what was delivered when the client leaves or stops
reading, and never bills a failed call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from typing import Any

from zgserve.broker import billing
from zgserve.broker.billing import Reservation
from zgserve.broker.core import BrokerCore
from zgserve.broker.db.models import FeeRecord, utcnow
from zgserve.broker.metering import StreamMeter, Usage, read_json_response
from zgserve.broker.shared_admission import SharedReservation
from zgserve.common import headers as zg_headers
from zgserve.common.errors import UpstreamError, ZgError, error_body
from zgserve.common.http1 import Response
from zgserve.common.pricing import Pricing
from zgserve.common.sse import DONE_EVENT, encode_event

logger = logging.getLogger(__name__)

RES_KEY = b"zg-res-key"
EXPOSE = (b"access-control-expose-headers", b"ZG-Res-Key")
DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "server",
        "date",
        "zg-res-key",
        "x-0g-fee",  # set by the broker only
        zg_headers.PROMPT_TOKENS,
    }
)


def pool_headers(upstream: Response) -> list[tuple[bytes, bytes]]:
    """The service's response headers worth passing on (hop-by-hop and internal ones dropped)."""
    return [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in upstream.headers.items()
        if k not in DROP_RESPONSE
    ]


class AnswerRelay:
    """The answer half of the proxy; the attributes below are set by ``ProxyApp``."""

    core: BrokerCore
    _in_flight: int  # requests being served; 1 lets the record commit skip the writer thread
    _idle: float | None  # a stream's client may read nothing this long

    async def _relay_error(self, send: Any, upstream: Response) -> None:
        """The service's error, relayed only as an OpenAI error JSON with a client-facing status."""
        data = await self._read_all(upstream)
        status = upstream.status
        if status < 400 or status >= 600:
            # A redirect or an unexpected success code is the service's fault, never the client's.
            raise UpstreamError(f"the service answered {status}")
        if not _is_error_json(data):
            raise UpstreamError(f"the service answered {status} without an error body")
        out = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _record(
        self, ctx: Charge, usage: Usage, response_id: str | None, status: str, stream: bool
    ) -> None:
        ctx.tokens = usage.prompt_tokens + usage.completion_tokens
        if ctx.reservation is None:
            self.core.metrics.charged.labels("whitelisted").inc()
            return
        # The prices of the tier the request fell in: fee <= tokens x these (cached tokens are
        # cheaper), which is what a user's audit of the receipts checks.
        input_price, output_price = ctx.pricing.unit_prices(usage.prompt_tokens)
        record = FeeRecord(
            request_id=ctx.request_id,
            user=ctx.user,
            model=ctx.model[:256],
            endpoint=ctx.endpoint,
            stream=stream,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            input_price=input_price,
            output_price=output_price,
            fee=ctx.pricing.fee(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
            response_id=response_id[:128] if response_id else None,
            status=status,
            created_at=utcnow(),
        )
        await self._commit(record, ctx.reservation)

    async def _commit(self, record: FeeRecord, reservation: Reservation | SharedReservation) -> int:
        """Record a charged answer durably, then turn its reservation into the fee: the fee charged.

        A fee is never above its reservation. The cap keeps output within it; only an input
        estimate below the real prompt (or speech longer than its ceiling) can get there, and the
        user is then charged what was admitted.
        """
        if record.fee > reservation.amount:
            logger.error(
                "request %s (%s) cost %d neuron, over its reservation of %d: charged the reservation",
                record.request_id,
                record.endpoint,
                record.fee,
                reservation.amount,
            )
            self.core.metrics.upstream_errors.labels("over_reservation").inc()
            record = dataclasses.replace(record, fee=reservation.amount)
        await self.core.writer.write(record, alone=self._in_flight == 1)
        reservation.charge(record.fee)
        self.core.metrics.fees.inc(record.fee)
        self.core.metrics.unsettled.inc(record.fee)
        self.core.metrics.charged.labels(record.status).inc()
        return record.fee

    async def _read_all(self, upstream: Response) -> bytes:
        try:
            return await upstream.read()
        except (OSError, TimeoutError):
            raise self._broken() from None

    def _broken(self) -> UpstreamError:
        self.core.metrics.upstream_errors.labels("broken").inc()
        return UpstreamError("the service's answer broke off", code="upstream_broken")

    async def _whole(self, send: Any, upstream: Response, ctx: Charge) -> None:
        data = await self._read_all(upstream)
        usage, response_id = read_json_response(data)
        response_id = upstream.headers.get("zg-res-key") or response_id
        status = "complete"
        if usage is None:
            status = "estimated"
            prompt = ctx.prompt_tokens
            if prompt is None:
                prompt = billing.prompt_tokens_lower_bound(ctx.request)
            usage = Usage(prompt, _completion_lower_bound(data))
        await self._record(ctx, usage, response_id, status, stream=False)
        out = pool_headers(upstream)
        out.append((b"content-length", str(len(data)).encode()))
        if response_id:
            out += [(RES_KEY, response_id.encode("latin-1", "replace")), EXPOSE]
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, receive: Any, send: Any, upstream: Response, ctx: Charge) -> None:
        meter = StreamMeter()
        held: list[bytes] = []
        held_content = 0
        response_id = upstream.headers.get("zg-res-key")
        if not response_id:
            # The id is in the first event: hold the bytes until it shows (the header goes first).
            try:
                while chunk := await upstream.readany():
                    held.append(chunk)
                    held_content += meter.feed(chunk)
                    if meter.response_id or meter.done:
                        break
            except (OSError, TimeoutError):
                raise self._broken() from None
            response_id = meter.response_id
        out = pool_headers(upstream)
        if response_id:
            out += [(RES_KEY, response_id.encode("latin-1", "replace")), EXPOSE]
        await send({"type": "http.response.start", "status": 200, "headers": out})
        watcher = asyncio.ensure_future(receive())
        delivered = 0
        partial = 0  # 1: the delivered bytes end inside an event whose text has left already
        recorded = False
        disconnected = False
        ended = False
        try:

            async def deliver(chunk: bytes, content: int) -> bool:
                nonlocal recorded, delivered, partial, disconnected, ended
                if watcher.done():
                    disconnected = True
                    return False
                if meter.done and not recorded and not meter.errored:
                    # The final bytes: the record is committed before they leave.
                    recorded = True
                    try:
                        await self._finish(ctx, meter, delivered + content, response_id, disconnected=False)
                    except ZgError as exc:
                        await send({"type": "http.response.body", "body": _sse_error(exc), "more_body": True})
                        return False
                # Recorded and nothing more to come: the chunk and the terminator leave in one write.
                ended = recorded and upstream.at_eof
                message = {"type": "http.response.body", "body": chunk, "more_body": not ended}
                if not await self._send_within(send, message):
                    # uvicorn waits for the client before writing: the chunk never left. What was
                    # written before still reaches a client that reads again, and is billed.
                    disconnected = True
                    ended = False
                    return False
                delivered += content
                partial = int(meter.partial_content())
                return True

            ok = True
            if held:
                ok = await deliver(b"".join(held), held_content)
            if ok:
                try:
                    while chunk := await upstream.readany():
                        if not await deliver(chunk, meter.feed(chunk)):
                            break
                except (OSError, TimeoutError):
                    # The service vanished mid-stream: a failed call, not charged; say so in the stream.
                    meter.errored = True
                    if not watcher.done():
                        await send({"type": "http.response.body", "body": _sse_error(self._broken())})
                        return
            if not recorded and (disconnected or not meter.errored):
                recorded = True
                try:
                    # A cut stream pays for the text that reached the client, a half-sent event too.
                    billed = delivered + partial if disconnected else delivered
                    await self._finish(ctx, meter, billed, response_id, disconnected=disconnected)
                except ZgError as exc:
                    if not disconnected:
                        await send({"type": "http.response.body", "body": _sse_error(exc)})
                    return
            if not disconnected and not ended:
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    async def _send_within(self, send: Any, message: dict[str, Any]) -> bool:
        """Send, unless the client reads nothing for ``limits.idleSeconds``; False: it stalled."""
        if self._idle is None:
            await send(message)
            return True
        try:
            async with asyncio.timeout(self._idle):
                await send(message)
        except TimeoutError:
            self.core.metrics.upstream_errors.labels("client_stalled").inc()
            logger.info("stream cut: the client read nothing for %g s", self._idle)
            return False
        return True

    async def _finish(
        self, ctx: Charge, meter: StreamMeter, delivered: int, response_id: str | None, *, disconnected: bool
    ) -> None:
        usage = meter.usage
        if disconnected or usage is None:
            # The prompt as the service counted it before the first byte; an estimate only if the
            # service could not count it.
            prompt = (
                usage.prompt_tokens
                if usage
                else ctx.prompt_tokens
                if ctx.prompt_tokens is not None
                else billing.prompt_tokens_lower_bound(ctx.request)
            )
            completion = min(delivered, usage.completion_tokens) if usage else delivered
            status = "disconnected" if disconnected else "estimated"
            usage = Usage(prompt, completion)
        else:
            status = "complete"
        if disconnected:
            logger.info(
                "stream cut by the client after %d content events; charging what was delivered", delivered
            )
        await self._record(ctx, usage, response_id, status, stream=True)


class Charge:
    """Per-request facts carried from admission to the record."""

    __slots__ = (
        "endpoint",
        "model",
        "pricing",
        "prompt_tokens",
        "request",
        "request_id",
        "reservation",
        "tokens",
        "user",
    )

    def __init__(
        self,
        user: str,
        endpoint: str,
        request: dict[str, Any],
        model: str,
        pricing: Pricing,
        reservation: Reservation | SharedReservation | None,  # None: whitelisted, never charged
    ) -> None:
        self.request_id = uuid.uuid4().hex
        self.user = user
        self.endpoint = endpoint
        self.request = request
        self.model = model
        self.pricing = pricing
        self.reservation = reservation
        self.prompt_tokens: int | None = None  # the service's count, sent before the answer
        self.tokens = 0  # prompt + completion as billed, for the tokens-per-minute limit


def adding_headers(send: Any, extra: list[tuple[bytes, bytes]]) -> Any:
    """``send`` with ``extra`` added to the response's headers (the rate-limit counts)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], *extra]}
        await send(message)

    return wrapped


def _completion_lower_bound(body: bytes) -> int:
    try:
        obj = json.loads(body)
        chars = sum(
            len((c.get("message") or {}).get("content") or c.get("text") or "")
            for c in obj.get("choices", [])
        )
    except (ValueError, AttributeError, TypeError):
        return 0
    return int(chars // 4)


def _is_error_json(data: bytes) -> bool:
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict)


def _sse_error(exc: ZgError) -> bytes:
    return encode_event(json.dumps(error_body(exc.message, exc.type, exc.code)).encode()) + DONE_EVENT
