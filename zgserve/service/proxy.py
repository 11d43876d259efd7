"""The signing proxy: forward the checked request, sign exactly what was received and sent.

Signed text = ``sha256(request bytes as the client sent them)`` ":"
``sha256(response bytes as sent to the client)``. The backend gets the request as
the service read it (:mod:`zgserve.service.outbound`: allow-listed, capped,
re-serialised, usage requested for streams); the signature still covers the
client's bytes, the only ones the client can hash. When the backend sends no
usage, one usage chunk (``choices: []``) is added before ``data: [DONE]``; it is
part of the signed bytes.

Only the first stream event (for its ``id``) and events that carry a usage object
are parsed on the way; the others are parsed at the end, and only to count the
generated tokens when the backend reported no usage.
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

from zgserve.common.errors import UpstreamError, error_body
from zgserve.common.http1 import Response
from zgserve.common.signing import Signer, signed_text, signed_text_from_hashes
from zgserve.common.sse import DONE_EVENT, SSEEvent, SSEParser, encode_event
from zgserve.service.outbound import Outbound, dumps
from zgserve.service.store import SignatureStore
from zgserve.service.tokens import TokenCounter
from zgserve.service.upstream import Upstream, backend_error
from zgserve.service.usage import PromptCount, complete_usage, count_prompt, generated_tokens, usage_object

logger = logging.getLogger(__name__)

CLIENT_DISCONNECTED = "response was not completed (client disconnected)"
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# Fast path for complete answers: OpenAI-compatible servers put "id" first and a flat usage object in
# every answer. Quotes inside JSON strings are escaped, so these patterns only match real keys; when
# any misses, the body is parsed in full.
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_.:\-]{1,128})"')
_FLAT_USAGE = re.compile(rb'"usage"\s*:\s*\{([^{}]*)\}')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*\d')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,12})\b')
# Ids the signature route serves; a backend id outside this is replaced by one of ours.
RESPONSE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def new_response_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


@dataclass(slots=True)
class Answer:
    """A complete (non-streamed) answer; ``response_id`` is set when it was signed."""

    status: int
    body: bytes
    response_id: str | None = None
    prompt_tokens: int | None = None


class SigningProxy:
    """Forwards completions to the backend and signs every complete answer."""

    def __init__(
        self,
        upstream: Upstream,
        signer: Signer,
        store: SignatureStore,
        counter: TokenCounter,
        *,
        count_timeout_s: float = 10.0,
    ) -> None:
        self.upstream = upstream
        self.signer = signer
        self.store = store
        self.counter = counter
        self.count_timeout_s = count_timeout_s

    def sign(self, response_id: str, text: str) -> None:
        self.store.add_signature(response_id, text, self.signer.sign_text(text), self.signer.address)

    async def complete(self, path: str, body: bytes, request: Outbound) -> Answer:
        """A non-streamed completion: forwarded, id and usage ensured, signed."""
        resp = await self.upstream.post(path, request.body)
        data = await self.upstream.read(resp)
        return await self._finish_json(resp.status, data, body, request.payload)

    async def _finish_json(self, status: int, data: bytes, body: bytes, payload: dict[str, Any]) -> Answer:
        if not 200 <= status < 300:
            return Answer(*backend_error(status, data))
        leading_id = _LEADING_ID.match(data)
        usage = _FLAT_USAGE.search(data) if leading_id is not None else None
        if leading_id is not None and usage is not None and _COMPLETION_TOKENS.search(usage.group(1)):
            response_id = leading_id.group(1).decode("ascii")
            self.sign(response_id, signed_text(body, data))
            prompt = _PROMPT_TOKENS.search(usage.group(1))
            return Answer(status, data, response_id, int(prompt.group(1)) if prompt else None)
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise UpstreamError("the model backend answered with invalid JSON") from exc
        if not isinstance(obj, dict):
            raise UpstreamError("the model backend answered with JSON that is not an object")
        changed = False
        response_id = obj.get("id")
        if not isinstance(response_id, str) or not RESPONSE_ID.fullmatch(response_id):
            response_id = obj["id"] = new_response_id()
            changed = True
        usage_obj = obj.get("usage")
        if not isinstance(usage_obj, dict) or not isinstance(usage_obj.get("completion_tokens"), int):
            usage_obj = obj["usage"] = await complete_usage(self.counter, payload, obj, self.count_timeout_s)
            changed = True
        if changed:
            data = dumps(obj)
        self.sign(response_id, signed_text(body, data))
        prompt_tokens = usage_obj.get("prompt_tokens")
        return Answer(status, data, response_id, prompt_tokens if isinstance(prompt_tokens, int) else None)

    async def open_stream(self, path: str, body: bytes, request: Outbound) -> Answer | ProxiedStream:
        """Start a streamed completion; returns an Answer when the backend did not stream.

        The prompt is counted while the request is on its way, so that the count is
        known before the answer's headers go out.
        """
        counting = asyncio.create_task(count_prompt(self.counter, request.payload, self.count_timeout_s))
        try:
            resp = await self.upstream.post(path, request.body)
            if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                data = await self.upstream.read(resp)
                counting.cancel()
                return await self._finish_json(resp.status, data, body, request.payload)
            stream = ProxiedStream(self, resp, body, request.payload, path)
            try:
                await stream.prime()
                stream.prompt = await counting
            except BaseException:
                resp.close()
                raise
            return stream
        finally:
            if not counting.done():
                counting.cancel()


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
        self.prompt = PromptCount(None, False)  # counted while the request went upstream
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
        self.response_id = rid if isinstance(rid, str) and RESPONSE_ID.fullmatch(rid) else new_response_id()
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
                out += encode_event(dumps(error_body(failure, "upstream_error", "upstream_stream_error")))
                out += DONE_EVENT
            else:
                if not self._usage_seen:
                    out += encode_event(dumps(self._usage_chunk()))
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

    def _usage_chunk(self) -> dict[str, Any]:
        usage = usage_object(self.prompt, generated_tokens(self._datas))
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
