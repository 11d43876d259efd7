"""``zgserve up`` selling media beside chat, each modality signed, metered and settled.

* ``--media`` (embeddings from the embedded llama.cpp server, real speech from espeak-ng):
  the demo user's embeddings and speech answers verify, their fees agree three ways (the
  billing rule, ``X-0G-Fee``, the broker's record) and settle with the chats;
* ``--image-url`` / ``--transcription-url`` with stand-in backends (no image model or
  speech recognizer runs here): the same checks, the printed URLs of the extra services,
  and the requests reaching the provider's backends;
* the speech server ``--speech`` runs: WAV speech, and OpenAI errors for bad requests.
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
from pathlib import Path

import aiohttp
import pytest
import soundfile  # type: ignore[import-untyped]

from tests.asgi import serve
from tests.e2e.test_up import ANY_PORTS, url_of, zgserve_up
from tests.fakes.media_backend import MediaBackend
from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.stack.speech_server import create_app as create_speech_app

pytestmark = pytest.mark.slow

MEDIA_LINE = (
    r"^{kind} \({model}, [\d.]+ s\): .*; fee (\d+) neuron by the billing rule, "
    r"X-0G-Fee (\d+), recorded (\d+) ✓; signature ✓ verified$"
)


def media_fee(out: str, kind: str, model: str) -> int:
    """The fee of one media line; fails unless rule, header and record agree and it verified."""
    match = re.search(MEDIA_LINE.format(kind=kind, model=re.escape(model)), out, re.MULTILINE)
    assert match, f"no verified {kind} line in:\n{out}"
    rule, charged, recorded = (int(g) for g in match.groups())
    assert rule == charged == recorded > 0
    return rule


def settled_as_recorded(out: str, receipts: int) -> None:
    recorded = re.search(r"fees recorded by the broker: (\d+) neuron", out)
    earned = re.search(r"provider's on-chain earnings: (\d+) neuron", out)
    paid = re.search(r"statuses success, paid (\d+) neuron", out)
    assert recorded, out
    assert earned, out
    assert paid, out
    assert int(earned.group(1)) == int(paid.group(1)) == int(recorded.group(1)) > 0
    assert f"settlement receipts verified: {receipts}/{receipts}" in out, out
    assert "DEMO OK" in [line.strip() for line in out.splitlines()], out


@pytest.mark.llama
async def test_up_media_sells_verified_embeddings_and_speech(tmp_path: Path) -> None:
    async with (
        zgserve_up("--media", "--exit-after-demo", *ANY_PORTS, cwd=tmp_path) as up,
        asyncio.timeout(240),
    ):
        code = await up.finish()
    out = up.output
    assert code == 0, out
    embed_fee = media_fee(out, "embeddings", "SmolLM2-135M-embed")
    speech_fee = media_fee(out, "speech", "espeak-ng")
    media = re.search(r"fees charged for media: (\d+) neuron", out)
    assert media, out
    assert int(media.group(1)) == embed_fee + speech_fee
    assert re.search(r"a vector of \d+ floats", out), out
    assert re.search(r"[1-9][\d.]* s of WAV speech", out), out
    settled_as_recorded(out, receipts=5)  # three chats, an embedding, a speech
    logs = tmp_path / ".zg" / "logs"
    for name in ("embeddings", "speech", "service-embeddings", "service-speech"):
        assert (logs / f"{name}.log").is_file(), name


async def test_up_sells_images_and_transcriptions_from_stand_in_backends(tmp_path: Path) -> None:
    async with FakeOpenAIBackend() as fake, MediaBackend() as backend:
        media = ("--image-url", backend.url, "--image-model", "painter")
        media += ("--transcription-url", backend.url, "--transcription-model", "ears")
        chat = ("--model-url", fake.url, "--model-name", "fake-model")
        async with zgserve_up(*media, *chat, *ANY_PORTS, cwd=tmp_path) as up:
            async with asyncio.timeout(120):
                await up.read_until("Press Ctrl-C")
            out = up.output
            media_fee(out, "image", "painter")
            media_fee(out, "transcription", "ears")
            assert "1 image(s), 1 PNG" in out, out
            assert re.search(r"s of a tone -> 'stand-in transcript of \d+ bytes'", out), out
            settled_as_recorded(out, receipts=5)  # three chats, an image, a transcription
            services = [url_of(out, f"Service for {model}") for model in ("painter", "ears")]
            assert url_of(out, "Backend of painter") == backend.url + "/v1"
            async with aiohttp.ClientSession() as http:
                for service in services:
                    async with http.get(service + "/health") as resp:
                        assert resp.status == 200, service
            up.proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                assert await up.finish() == 0, up.output
    paths = [path for path, _, _ in backend.requests]
    assert paths == ["/v1/images/generations", "/v1/audio/transcriptions"]


async def test_up_speech_server_speaks_wav_and_refuses_bad_requests_in_the_openai_shape() -> None:
    async with serve(create_speech_app()) as url, aiohttp.ClientSession() as http:
        async with http.post(
            url + "/v1/audio/speech", json={"model": "espeak-ng", "input": "Hello."}
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "audio/wav"
            info = soundfile.info(io.BytesIO(await resp.read()))
            assert info.frames > info.samplerate // 4  # a word lasts more than a quarter second
        bad: list[tuple[bytes, int, str | None]] = [
            (b"not json", 400, None),
            (b"[]", 400, None),
            (b'{"input": ""}', 400, "input"),
            (b'{"input": "hi", "speed": 9}', 400, "speed"),
            (b'{"input": "hi", "speed": true}', 400, "speed"),
            (b'{"input": "hi", "response_format": "mp3"}', 400, "response_format"),
            (b'{"input": "' + b"a" * 5000 + b'"}', 400, "input"),
            (b" " * (70 * 1024), 413, None),
        ]
        for body, status, param in bad:
            async with http.post(url + "/v1/audio/speech", data=body) as resp:
                assert resp.status == status, body[:40]
                error = (await resp.json())["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["param"] == param
