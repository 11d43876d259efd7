"""The signing proxy: forward raw bytes, sign exactly what was received and sent.

Signed text = ``sha256(request bytes as the client sent them)`` ":"
``sha256(response bytes as sent to the client)``. For streams the service asks
the backend for usage (``stream_options.include_usage``), so the bytes it
forwards may differ from what the client sent; the signature still covers the
client's bytes, the only ones the client can hash. When the backend sends no
usage, one usage chunk (``choices: []``) is added before ``data: [DONE]``; it is
part of the signed bytes.

Only the first stream event (for its ``id``) and events that carry a usage object
are parsed on the way; everything else is forwarded as it came.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from zgserve.common.errors import BadRequest, UpstreamError, error_body
from zgserve.common.signing import Signer, signed_text, signed_text_from_hashes
from zgserve.common.sse import DONE_EVENT, SSEEvent, SSEParser, encode_event
from zgserve.service.http1 import Response
from zgserve.service.store import SignatureStore
from zgserve.service.tokens import TokenCounter
from zgserve.service.upstream import Upstream, backend_error_body

logger = logging.getLogger(__name__)

CLIENT_DISCONNECTED = "response was not completed (client disconnected)"
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# Fast path for complete answers: OpenAI-compatible servers put "id" first and a usage object with
# completion_tokens in every answer. Quotes inside JSON strings are escaped, so these patterns only
# match real keys; when either misses, the body is parsed in full.
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_.:\-]+)"')
_USAGE_WITH_COMPLETION = re.compile(rb'"usage"\s*:\s*\{[^{}]*"completion_tokens"\s*:\s*\d')
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def new_response_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(slots=True)
class Answer:
    """A complete (non-streamed) answer; ``response_id`` is set when it was signed."""

    status: int
    body: bytes
    response_id: str | None = None


def parse_request(body: bytes) -> dict[str, Any]:
    """The request JSON object; BadRequest when it is not one or ``stream`` is not a boolean."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(payload.get("stream", False), bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    return payload


def with_usage_requested(body: bytes, payload: dict[str, Any]) -> bytes:
    """The body to send upstream for a stream: ``stream_options.include_usage`` set to true."""
    options = payload.get("stream_options")
    if "stream_options" not in payload:
        # Cheap and exact: the key is absent, so adding it first cannot create a duplicate.
        brace = body.index(b"{")
        return body[: brace + 1] + _INCLUDE_USAGE + body[brace + 1 :]
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body
    rewritten = dict(payload)
    rewritten["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return _dumps(rewritten)


class SigningProxy:
    """Forwards completions to the backend and signs every complete answer."""

    def __init__(
        self, upstream: Upstream, signer: Signer, store: SignatureStore, counter: TokenCounter
    ) -> None:
        self.upstream = upstream
        self.signer = signer
        self.store = store
        self.counter = counter

    def sign(self, response_id: str, text: str) -> None:
        self.store.add_signature(response_id, text, self.signer.sign_text(text), self.signer.address)

    async def complete(self, path: str, body: bytes, payload: dict[str, Any]) -> Answer:
        """A non-streamed completion: forwarded, id and usage ensured, signed."""
        resp = await self.upstream.post(path, body)
        data = await self.upstream.read(resp)
        return await self._finish_json(resp.status, data, body, payload)

    async def _finish_json(self, status: int, data: bytes, body: bytes, payload: dict[str, Any]) -> Answer:
        if not 200 <= status < 300:
            return Answer(status, backend_error_body(status, data))
        leading_id = _LEADING_ID.match(data)
        if leading_id is not None and _USAGE_WITH_COMPLETION.search(data) is not None:
            response_id = leading_id.group(1).decode("ascii")
            self.sign(response_id, signed_text(body, data))
            return Answer(status, data, response_id)
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise UpstreamError("the model backend answered with invalid JSON") from exc
        if not isinstance(obj, dict):
            raise UpstreamError("the model backend answered with JSON that is not an object")
        changed = False
        response_id = obj.get("id")
        if not isinstance(response_id, str) or not response_id:
            response_id = obj["id"] = new_response_id()
            changed = True
        usage = obj.get("usage")
        if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
            obj["usage"] = await self._count_complete(payload, obj)
            changed = True
        if changed:
            data = _dumps(obj)
        self.sign(response_id, signed_text(body, data))
        return Answer(status, data, response_id)

    async def open_stream(self, path: str, body: bytes, payload: dict[str, Any]) -> Answer | ProxiedStream:
        """Start a streamed completion; returns an Answer when the backend did not stream."""
        resp = await self.upstream.post(path, with_usage_requested(body, payload))
        if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
            data = await self.upstream.read(resp)
            return await self._finish_json(resp.status, data, body, payload)
        stream = ProxiedStream(self, resp, body, payload, path)
        try:
            await stream.prime()
        except BaseException:
            resp.close()
            raise
        return stream

    async def _count_complete(self, payload: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        texts: list[str] = []
        for choice in obj.get("choices") or []:
            if isinstance(choice, dict):
                message = choice.get("message")
                texts.append(
                    _message_text(message) if isinstance(message, dict) else str(choice.get("text") or "")
                )
        return await self.count_usage(payload, texts, chunks=len(texts))

    async def count_usage(self, payload: dict[str, Any], texts: list[str], chunks: int) -> dict[str, Any]:
        """Usage counted with the backend's tokenizer; ``estimated`` is set when it could not be exact."""
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        exact = True
        if "messages" in payload:
            prompt, exact = await self.counter.count_chat(payload)
        else:
            prompt = await self.counter.count_prompt(payload.get("prompt"), model)
        completion = 0
        for text in texts:
            count = await self.counter.count_text(text, model)
            if count is None:
                completion, exact = chunks, False
                break
            completion += count
        if prompt is None:
            prompt, exact = 0, False
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if not exact:
            usage["estimated"] = True
        return usage


def _message_text(message: dict[str, Any]) -> str:
    parts = [message.get("content"), message.get("reasoning_content")]
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts += [function.get("name"), function.get("arguments")]
    return "".join(p for p in parts if isinstance(p, str))


class ProxiedStream:
    """One streamed answer: forwards events, adds usage if missing, signs before the last block."""

    def __init__(
        self,
        proxy: SigningProxy,
        resp: Response,
        body: bytes,
        payload: dict[str, Any],
        path: str,
    ) -> None:
        self._proxy = proxy
        self._resp = resp
        self._request_body = body
        self._payload = payload
        self._object = "text_completion" if path.endswith("/v1/completions") else "chat.completion.chunk"
        self._parser = SSEParser()
        self._hash = hashlib.sha256()
        self._first = b""
        self._datas: list[bytes] = []  # data payloads, parsed only if usage must be counted
        self._usage_seen = False
        self._done: bytes | None = None  # the backend's [DONE] event, held back until the end
        self._after_done = b""
        self.client_gone = False
        self.last_block = False  # the block ``blocks`` yields is the last and the backend is done
        self.response_id = ""
        self._model: Any = payload.get("model")
        self._created: Any = None

    async def prime(self) -> None:
        """Read up to the first data event, to learn the response id before any header is sent."""
        pending: list[SSEEvent] = []
        while not self.response_id:
            try:
                chunk = await self._resp.readany()
            except (OSError, TimeoutError) as exc:
                raise UpstreamError(
                    f"the model backend's stream broke off before its first event: {exc}"
                ) from exc
            if not chunk:
                raise UpstreamError("the model backend's stream ended before its first event")
            for event in self._parser.feed(chunk):
                pending.append(event)
                if not self.response_id and event.data is not None and not event.is_done:
                    self._learn_first(event.data)
        self._first = self._forward(pending)

    def _learn_first(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        rid = obj.get("id") if isinstance(obj, dict) else None
        self.response_id = rid if isinstance(rid, str) and rid else new_response_id()
        if isinstance(obj, dict):
            self._model = obj.get("model", self._model)
            self._created = obj.get("created")

    def _forward(self, events: list[SSEEvent]) -> bytes:
        """The bytes of ``events`` to send now; [DONE] and whatever follows it are held back."""
        out = b""
        for event in events:
            if self._done is not None:
                self._after_done += event.raw
                continue
            data = event.data
            if data is not None:
                if event.is_done:
                    self._done = event.raw
                    continue
                if not self._usage_seen:
                    self._datas.append(data)
                    if b'"usage"' in data and _USAGE_OBJECT.search(data):
                        self._usage_seen = _has_usage(data)
            out += event.raw
        return out

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        """The bytes to send, in order. The last block goes out only after the answer is signed."""
        out = self._first
        failure: str | None = None
        try:
            while self._done is None:
                if out:
                    self._hash.update(out)
                    yield out
                    out = b""
                if self.client_gone:
                    return
                try:
                    chunk = await self._resp.readany()
                except (OSError, TimeoutError) as exc:
                    if self.client_gone:
                        return
                    failure = f"the model backend's stream broke off: {exc or type(exc).__name__}"
                    break
                if not chunk:
                    tail = self._parser.close()
                    out = self._forward([tail]) if tail is not None else b""
                    break
                out = self._forward(self._parser.feed(chunk))
            if failure is not None:
                logger.error("stream %s: %s", self.response_id, failure)
                out += encode_event(_dumps(error_body(failure, "upstream_error", "upstream_stream_error")))
                out += DONE_EVENT
            else:
                if not self._usage_seen:
                    out += encode_event(_dumps(await self._usage_chunk()))
                out += (self._done or DONE_EVENT) + self._after_done
            if self.client_gone:
                return
            self._hash.update(out)
            request_hash = hashlib.sha256(self._request_body).hexdigest()
            self._proxy.sign(self.response_id, signed_text_from_hashes(request_hash, self._hash.hexdigest()))
            # Only when the backend's body is complete: the client may send its next request as soon
            # as this block ends the response, and this connection must be back in the pool by then.
            self.last_block = self._resp.at_eof
            yield out
            await self._drain()
        finally:
            if self.client_gone:
                self._proxy.store.add_incomplete(self.response_id, CLIENT_DISCONNECTED)
            self._resp.release()

    async def _drain(self) -> None:
        # Read the backend's end of body (normally already here) so that its connection can be reused.
        try:
            async with asyncio.timeout(1.0):
                for _ in range(16):
                    if self._resp.at_eof or not await self._resp.readany():
                        return
        except (OSError, TimeoutError):
            return

    async def _usage_chunk(self) -> dict[str, Any]:
        texts: dict[int, list[str]] = {}
        for data in self._datas:
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            choices = obj.get("choices") if isinstance(obj, dict) else None
            for choice in choices if isinstance(choices, list) else []:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                delta = choice.get("delta")
                piece = _message_text(delta) if isinstance(delta, dict) else str(choice.get("text") or "")
                texts.setdefault(index if isinstance(index, int) else 0, []).append(piece)
        usage = await self._proxy.count_usage(
            self._payload, ["".join(parts) for parts in texts.values()], chunks=len(self._datas)
        )
        return {
            "id": self.response_id,
            "object": self._object,
            "created": self._created if isinstance(self._created, int) else int(time.time()),
            "model": self._model,
            "choices": [],
            "usage": usage,
        }

    def mark_client_gone(self) -> None:
        """The client went away: no signature, and the backend connection is dropped."""
        if not self.client_gone:
            self.client_gone = True
            self._resp.close()


def _has_usage(data: bytes) -> bool:
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int)
