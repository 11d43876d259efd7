"""A small, real OpenAI-compatible backend for tests and benchmarks.

Behaviour is chosen per request by an extra ``"fake"`` object in the request body
(the service forwards it when its settings name ``fake`` in ``allowed_params``), for example::

    {"messages": [...], "stream": true, "fake": {"chunks": 20, "write_size": 7, "die_after": 5}}

``fake`` keys: ``chunks`` (stream events / words, default 8), ``text`` (fixed
content instead of words), ``pieces`` (the generated tokens, one stream event each, and
counted as such in usage: a model's segmentation need not be its tokenizer's),
``status`` (answer this HTTP error), ``raw_error`` (error body that is not JSON),
``delay_ms`` (before answering), ``chunk_delay_ms`` (between stream writes),
``separate_writes`` (one write per event), ``write_size``
(split the SSE body into writes of this many bytes, so events straddle reads),
``die_after`` (close the connection after this many events, mid-stream), ``no_id``,
``no_usage`` (non-streamed answer without usage), ``json_for_stream`` (answer a
stream request with plain JSON), ``as_asked`` (cut the words at ``max_tokens`` and answer
with the request's ``model``, as a real backend does), ``cached_tokens`` (reported in
``usage.prompt_tokens_details``, as vLLM and llama.cpp do for a reused prompt prefix).

``POST /v1/embeddings`` answers four numbers per input, with the inputs' words as
``usage.prompt_tokens``.

Server-wide: ``stream_usage`` (honour ``stream_options.include_usage``; False acts
like llama.cpp), ``tokenize`` (serve the vLLM-style ``/tokenize``).

The tokenizer is one token per whitespace-separated word; a chat prompt costs its
words plus 3 per message (a stand-in for a chat template).

Run alone: ``python -m tests.fakes.openai_backend --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

MODEL = "fake-model"


def count_words(text: str) -> int:
    return len(text.split())


def chat_prompt_tokens(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += 3 + (count_words(content) if isinstance(content, str) else 0)
    return total


def prompt_tokens(body: dict[str, Any]) -> int:
    if isinstance(body.get("messages"), list):
        return chat_prompt_tokens(body["messages"])
    prompt = body.get("prompt")
    return count_words(prompt) if isinstance(prompt, str) else 0


def _pieces(fake: dict[str, Any]) -> list[str]:
    if isinstance(fake.get("pieces"), list):
        return [str(p) for p in fake["pieces"]]
    if isinstance(fake.get("text"), str):
        words = fake["text"].split(" ")
        return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
    return [f"w{i} " for i in range(int(fake.get("chunks", 8)))]


def _as_asked(fake: dict[str, Any], body: dict[str, Any], pieces: list[str]) -> list[str]:
    limit = body.get("max_tokens")
    return pieces[:limit] if fake.get("as_asked") and isinstance(limit, int) else pieces


def _model(fake: dict[str, Any], body: dict[str, Any]) -> str:
    asked = body.get("model")
    return asked if fake.get("as_asked") and isinstance(asked, str) else MODEL


def _usage(fake: dict[str, Any], prompt: int, completion: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if isinstance(fake.get("cached_tokens"), int):
        usage["prompt_tokens_details"] = {"cached_tokens": fake["cached_tokens"]}
    return usage


def _generated(fake: dict[str, Any], pieces: list[str]) -> int:
    return len(pieces) if "pieces" in fake else count_words("".join(pieces))


class FakeOpenAIBackend:
    """``async with FakeOpenAIBackend() as fake: fake.url`` -> http://127.0.0.1:<port>."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, stream_usage: bool = True, tokenize: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.stream_usage = stream_usage
        self.tokenize = tokenize
        self.requests: list[bytes] = []  # bodies as received, newest last
        self.peers: set[Any] = set()  # client (host, port) pairs: one per connection used
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completion)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        if self.tokenize:
            app.router.add_post("/tokenize", self._tokenize)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]}
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Four numbers per input; ``usage.prompt_tokens`` is the inputs' words (a token list: its length)."""
        body = await request.json()
        items = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
        if items and all(isinstance(t, int) for t in items):
            items = [items]
        tokens = sum(len(i) if isinstance(i, list) else count_words(str(i)) for i in items)
        data = [
            {"object": "embedding", "index": n, "embedding": [0.5, -0.25, 0.125, n]}
            for n in range(len(items))
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": body.get("model", MODEL), "usage": usage}
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body.get("messages"), list):
            count = chat_prompt_tokens(body["messages"])
        else:
            count = count_words(str(body.get("prompt", "")))
        return web.json_response({"count": count, "tokens": list(range(count)), "max_model_len": 4096})

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(raw)
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = json.loads(raw)
        fake: dict[str, Any] = body.get("fake") or {}
        if fake.get("delay_ms"):
            await asyncio.sleep(fake["delay_ms"] / 1000)
        if "status" in fake:
            if fake.get("raw_error"):
                return web.Response(status=fake["status"], text=str(fake["raw_error"]))
            error = {
                "error": {"message": "fake failure", "type": "fake_error", "param": None, "code": "fake"}
            }
            return web.json_response(error, status=fake["status"])
        chat = request.path.endswith("/chat/completions")
        if body.get("stream") and not fake.get("json_for_stream"):
            return await self._stream(request, body, fake, chat)
        pieces = _as_asked(fake, body, _pieces(fake))
        text = "".join(pieces)
        answer: dict[str, Any] = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": _model(fake, body),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "stop"}
            ],
        }
        if fake.get("no_id"):
            del answer["id"]
        if not fake.get("no_usage"):
            p, c = prompt_tokens(body), _generated(fake, pieces)
            answer["usage"] = _usage(fake, p, c)
        return web.Response(
            body=json.dumps(answer, ensure_ascii=False).encode(), content_type="application/json"
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], fake: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        pieces = _as_asked(fake, body, _pieces(fake))
        events: list[bytes] = []

        def chunk(choices: list[Any], **extra: Any) -> bytes:
            obj: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
            }
            obj.update(created=created, model=_model(fake, body), choices=choices, **extra)
            if fake.get("no_id"):
                del obj["id"]
            return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"

        for i, piece in enumerate(pieces):
            delta: dict[str, Any] = {"content": piece} if i else {"role": "assistant", "content": piece}
            choice = (
                {"index": 0, "delta": delta, "finish_reason": None} if chat else {"index": 0, "text": piece}
            )
            events.append(chunk([choice]))
        events.append(
            chunk(
                [
                    {"index": 0, "delta": {}, "finish_reason": "stop"}
                    if chat
                    else {"index": 0, "text": "", "finish_reason": "stop"}
                ]
            )
        )
        options = body.get("stream_options") or {}
        if self.stream_usage and options.get("include_usage"):
            p, c = prompt_tokens(body), _generated(fake, pieces)
            events.append(chunk([], usage=_usage(fake, p, c)))
        events.append(b"data: [DONE]\n\n")

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        die_after = fake.get("die_after")
        if die_after is not None:
            payload = b"".join(events[: int(die_after)])
            await resp.write(payload)
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()  # no chunked terminator: the stream is cut
            return resp
        payload = b"".join(events)
        size = int(fake.get("write_size", 0)) or None
        delay = float(fake.get("chunk_delay_ms", 0)) / 1000
        if size is None and not delay and not fake.get("separate_writes"):
            await resp.write(payload)
        else:
            parts = [payload[i : i + size] for i in range(0, len(payload), size)] if size else events
            for part in parts:
                await resp.write(part)
                if delay:
                    await asyncio.sleep(delay)
        await resp.write_eof()
        return resp


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--no-stream-usage", action="store_true")
    args = parser.parse_args()
    backend = FakeOpenAIBackend(host=args.host, port=args.port, stream_usage=not args.no_stream_usage)
    web.run_app(backend.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
