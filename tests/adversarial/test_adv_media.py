"""Embeddings, images and audio under attack: the same invariants as chat.

No 5xx for client input (malformed multipart, non-audio, odd fields, wrong content types),
every answer billed exactly once, a fee never above its reservation, a cut upload never
billed and a cut download billed what was recorded before the first byte left. The backends
are the media backend's: real espeak-ng speech, stand-ins for images and transcription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.adversarial import rawhttp
from tests.adversarial.conftest import FAKE_PRICES, MEDIA_PRICES, Stack, Tally
from tests.adversarial.test_adv_inputs import fuzz, run
from tests.media_bodies import multipart, wav
from zgserve.devnet.network import Devnet

PROXY = "/v1/proxy"
BOUNDARY = "adv7MA4YWxkTrZu0gW"
JSON = ("Content-Type", "application/json")
UPLOAD = ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")


def form(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    return multipart(fields, dict(files), BOUNDARY)


GOOD_UPLOAD = form({"model": "ears", "language": "en"}, {"file": ("a.wav", wav(8_000))})


@st.composite
def broken_upload(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid transcription upload cut, spliced, flipped or re-labelled somewhere."""
    body = bytearray(GOOD_UPLOAD)
    kind = draw(st.integers(0, 4))
    at = draw(st.integers(0, len(body) - 1))
    if kind == 0:
        return f"cut at {at}", bytes(body[:at])
    if kind == 1:
        body[at] = draw(st.integers(0, 255))
        return f"byte {at} flipped", bytes(body)
    if kind == 2:
        junk = draw(st.sampled_from([b"\r\n", b"--", f"--{BOUNDARY}".encode(), b'"', b"\x00", b"\r\n\r\n"]))
        return f"{junk!r} inserted at {at}", bytes(body[:at]) + junk + bytes(body[at:])
    if kind == 3:
        name = draw(st.sampled_from(["file", "model", "language", "x" * 80, "", "FILE", "prompt\r\nX: y"]))
        return f"field {name!r}", bytes(GOOD_UPLOAD.replace(b'name="language"', f'name="{name}"'.encode()))
    data = draw(st.sampled_from([b"", b"RIFF", wav(0), b"ID3" + b"\x00" * 100, b"fLaC" * 10, b"OggS" * 10]))
    return f"file {data[:12]!r}", form({"model": "ears"}, {"file": ("a.wav", data)})


async def test_broken_uploads_stand_in_backend(media_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = media_stack

    @fuzz(300)
    @given(case=broken_upload(), route=st.sampled_from(["/audio/transcriptions", "/images/edits"]))
    def one(case: tuple[str, bytes], route: str) -> None:
        what, body = case
        headers = [("Authorization", stack.token()), UPLOAD]
        stack.send("POST", PROXY + route, headers=headers, body=body, what=f"{route} {what}")

    await run(stack, tally, devnet, one)


ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=40),
    st.lists(st.integers(-5, 2**33), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["64x64", "auto", "wav", "mp3", "b64_json", "url", "", "9" * 30]),
)  # fmt: skip
JSON_BASES: dict[str, dict[str, Any]] = {
    "/images/generations": {"model": "painter", "prompt": "a fox", "n": 1},
    "/audio/speech": {"model": "voice", "input": "short"},
    "/embeddings": {"model": "fake-model", "input": "hello"},
}
JSON_FIELDS = [
    "model",
    "prompt",
    "n",
    "size",
    "response_format",
    "input",
    "voice",
    "speed",
    "quality",
    "extra",
]


async def test_odd_json_fields_stand_in_backend(media_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = media_stack

    @fuzz(300)
    @given(route=st.sampled_from(sorted(JSON_BASES)), field=st.sampled_from(JSON_FIELDS), value=ODD)
    def one(route: str, field: str, value: Any) -> None:
        body = {**JSON_BASES[route], field: value}
        try:
            raw = json.dumps(body).encode()
        except ValueError:
            raw = repr(body).encode()
        content_type = ("Content-Type", "text/plain") if field == "extra" and value is None else JSON
        stack.send("POST", PROXY + route, headers=[("Authorization", stack.token()), content_type], body=raw)

    await run(stack, tally, devnet, one)


def _fee(reply: rawhttp.Reply) -> int:
    value = reply.header("x-0g-fee")
    assert value is not None, reply.headers
    return int(value)


async def test_fees_stay_within_their_reservations_stand_in_backend(
    media_stack: Stack, tally: Tally, devnet: Devnet
) -> None:
    stack = media_stack
    mark = tally.snapshot()
    token = [("Authorization", stack.token(1))]
    cases: list[tuple[str, list[Any], bytes, int]] = []
    for n in (1, 3):
        body = json.dumps({"model": "painter", "prompt": "foxes", "n": n, "size": "64x64"}).encode()
        cases.append(("/images/generations", [JSON], body, math.ceil(n * 1.5) * MEDIA_PRICES["image"]))
    text = "Every answer is billed, and never above what was reserved."
    body = json.dumps({"model": "voice", "input": text}).encode()
    cases.append(("/audio/speech", [JSON], body, min(20, math.ceil(2 + len(text) / 4)) * MEDIA_PRICES["tts"]))
    cases.append(("/audio/transcriptions", [UPLOAD], GOOD_UPLOAD, MEDIA_PRICES["stt"]))  # 0.5 s: 1 s
    body = json.dumps({"model": "fake-model", "input": ["three short words", "two more"]}).encode()
    cases.append(("/embeddings", [JSON], body, len(body) * FAKE_PRICES[0]))  # a token is at least a byte
    for route, headers, raw, reserved in cases:
        reply = stack.send("POST", PROXY + route, headers=token + headers, body=raw)
        assert reply.status == 200, reply.body[:300]
        fee = _fee(reply)
        record = stack.record(reply.header("zg-res-key") or "")
        assert record is not None
        assert record["fee"] == fee <= reserved, (route, fee, reserved)
    await stack.after_batch(devnet)
    tally.assert_clean(mark)


def _records() -> str:
    return "SELECT COUNT(*), COALESCE(SUM(fee), 0) FROM broker_requests"


async def test_a_cut_upload_is_never_billed_and_a_cut_download_is_billed_stand_in_backend(
    media_stack: Stack, tally: Tally, devnet: Devnet
) -> None:
    stack = media_stack
    mark = tally.snapshot()
    before = stack.query(_records())[0]
    head = rawhttp.build(
        "POST",
        PROXY + "/audio/transcriptions",
        [("Authorization", stack.token()), UPLOAD, ("Content-Length", str(len(GOOD_UPLOAD)))],
        b"",
        f"127.0.0.1:{stack.port}",
    )
    for cut in (0, 100, len(GOOD_UPLOAD) - 5):
        with rawhttp.connect(stack.port, 10) as sock:
            sock.sendall(head + GOOD_UPLOAD[:cut])
            sock.shutdown(socket.SHUT_WR)  # the client gives up mid-upload
            sock.settimeout(10)
            with contextlib.suppress(OSError):  # the broker may answer 400/close, or just close
                while sock.recv(65536):
                    pass
    await asyncio.sleep(0.3)
    assert stack.query(_records())[0] == before, "a cut upload was billed"

    # A download cut after the headers: the answer was produced and recorded before its first byte.
    speech = json.dumps({"model": "voice", "input": "A long answer the client stops reading."}).encode()
    request = rawhttp.build(
        "POST",
        PROXY + "/audio/speech",
        [("Authorization", stack.token()), JSON],
        speech,
        f"127.0.0.1:{stack.port}",
    )
    with rawhttp.connect(stack.port, 30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
        first = sock.recv(1024)
    reply = rawhttp.parse(first)
    assert reply.status == 200, first[:300]
    key = reply.header("zg-res-key")
    assert key is not None
    record = stack.record(key)
    assert record is not None
    assert record["fee"] == _fee(reply) > 0
    stack.tally.add("inputs", n=4)
    await stack.after_batch(devnet)
    tally.assert_clean(mark)
