"""The openai helpers against a small real HTTP server: exact bytes and chat ids are recorded."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zgserve.client.openai_client import (
    ExchangeRecorder,
    async_openai_client,
    first_sse_id,
    openai_client,
    proxy_base_url,
)

TOKEN = "app-sk-dGVzdA=="
# Deliberately not what json.dumps would produce (spacing, non-ASCII kept raw).
JSON_BODY = (
    '{"id": "chatcmpl-plain", "object":"chat.completion","created":1,"model":"m",'
    '"choices":[{"index":0,"message":{"role":"assistant","content":"héllo"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
).encode()


def _chunk(content: str, finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


SSE_BODY = _chunk("a") + _chunk("b", "stop") + b"data: [DONE]\n\n"


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization"), body))
        request = json.loads(body)
        if request.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for part in (SSE_BODY[:10], SSE_BODY[10:200], SSE_BODY[200:]):
                self.wfile.write(part)
                self.wfile.flush()
            return
        payload = JSON_BODY
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if request.get("model") == "gzip":
            payload = gzip.compress(JSON_BODY)
            self.send_header("Content-Encoding", "gzip")
        else:
            self.send_header("ZG-Res-Key", "chatcmpl-header")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, str | None, bytes]]]]:
    seen: list[tuple[str, str | None, bytes]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_proxy_base_url() -> None:
    assert proxy_base_url("http://h:1/") == "http://h:1/v1/proxy"
    assert proxy_base_url("https://h") == "https://h/v1/proxy"


def test_sync_non_stream_records_exact_bytes(server: tuple[str, list[tuple[str, str | None, bytes]]]) -> None:
    url, seen = server
    recorder = ExchangeRecorder()
    client = openai_client(url, TOKEN, recorder=recorder)
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "héllo"
    path, auth, sent = seen[0]
    assert path == "/v1/proxy/chat/completions"
    assert auth == f"Bearer {TOKEN}"
    exchange = recorder.last
    assert exchange.request_body == sent
    assert exchange.response_body == JSON_BODY
    assert exchange.complete
    assert exchange.status == 200
    assert not exchange.streamed
    assert exchange.chat_id == "chatcmpl-header"
    assert recorder.find("chatcmpl-header") is exchange
    client.close()


def test_gzip_body_is_recorded_decoded(server: tuple[str, list[tuple[str, str | None, bytes]]]) -> None:
    url, _ = server
    recorder = ExchangeRecorder()
    with openai_client(url, lambda: TOKEN, recorder=recorder) as client:
        client.chat.completions.create(model="gzip", messages=[{"role": "user", "content": "hi"}])
    assert recorder.last.response_body == JSON_BODY
    assert recorder.last.chat_id == "chatcmpl-plain"  # from the body when no header


def test_sync_stream_records_whole_sse_body(server: tuple[str, list[tuple[str, str | None, bytes]]]) -> None:
    url, seen = server
    recorder = ExchangeRecorder()
    client = openai_client(url, TOKEN, recorder=recorder)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "ab"
    exchange = recorder.last
    assert exchange.streamed
    assert exchange.response_body == SSE_BODY
    assert exchange.complete
    assert exchange.request_body == seen[0][2]
    assert exchange.chat_id == "chatcmpl-stream"
    client.close()


async def test_async_stream_and_plain(server: tuple[str, list[tuple[str, str | None, bytes]]]) -> None:
    url, seen = server
    recorder = ExchangeRecorder()

    async def key() -> str:
        return TOKEN

    client = async_openai_client(url, key, recorder=recorder)
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = [chunk.choices[0].delta.content async for chunk in stream]
    assert "".join(p or "" for p in parts) == "ab"
    assert recorder.last.response_body == SSE_BODY
    assert recorder.last.complete
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert recorder.last.response_body == JSON_BODY
    assert [e.chat_id for e in recorder.exchanges] == ["chatcmpl-stream", "chatcmpl-header"]
    assert seen[1][1] == f"Bearer {TOKEN}"
    await client.close()


def test_first_sse_id() -> None:
    assert first_sse_id(b': keep-alive\r\n\r\ndata:{"id":"x"}\r\n\r\n') == "x"
    assert first_sse_id(b"data: [DONE]\n\n") is None
    assert first_sse_id(b'data: not json\n\ndata: {"id": "y"}\n\n') == "y"


def test_recorder_empty() -> None:
    with pytest.raises(LookupError):
        _ = ExchangeRecorder().last
