"""The service's media routes: canonical requests upstream, exact bytes signed, bad answers refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.media_backend import MediaBackend, png
from tests.integration.service.conftest import RunningService, StartService
from tests.media_bodies import multipart
from zgserve.common.signing import recover_address, signed_text

BOUNDARY = "X-client-boundary"


def upload(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    return multipart(fields, dict(files), BOUNDARY)


@pytest.fixture
async def media(start_service: StartService) -> AsyncIterator[tuple[RunningService, MediaBackend]]:
    async with MediaBackend() as backend:
        yield await start_service(target_url=backend.url, allowed_params=[]), backend


async def post(
    service: RunningService, path: str, body: bytes, content_type: str
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(service.v1 + path, data=body, headers={"Content-Type": content_type}) as r,
    ):
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


async def signature(service: RunningService, response_id: str) -> dict[str, str]:
    status, record = await service.get_json(f"/v1/signature/{response_id}")
    assert status == 200, record
    return dict(record)


async def test_an_image_edit_upload_is_signed_as_received_and_forwarded_canonically(
    media: tuple[RunningService, MediaBackend],
) -> None:
    service, backend = media
    body = upload({"prompt": "a hat", "n": "2", "model": "m"}, {"image": ("in.png", png(4, 4))})
    status, headers, data = await post(
        service, "/images/edits", body, f"multipart/form-data; boundary={BOUNDARY}"
    )
    assert status == 200, data
    assert len(json.loads(data)["data"]) == 2
    record = await signature(service, headers["zg-res-key"])
    assert record["text"] == signed_text(body, data)
    assert (
        recover_address(record["text"], record["signature"]).lower()
        == (await service.signing_address()).lower()
    )
    path, kind, sent = backend.requests[-1]
    assert path == "/v1/images/edits"
    assert kind.startswith("multipart/form-data; boundary=zg")
    assert BOUNDARY.encode() not in sent
    assert png(4, 4) in sent


async def test_speech_is_relayed_as_audio_and_a_backend_that_is_not_audio_is_a_502(
    media: tuple[RunningService, MediaBackend],
) -> None:
    service, _ = media
    body = json.dumps({"input": "Hello there.", "voice": "en", "speed": 1.5}).encode()
    status, headers, data = await post(service, "/audio/speech", body, "application/json")
    assert status == 200, data
    assert headers["content-type"] == "audio/wav"
    assert data[:4] == b"RIFF"
    assert (await signature(service, headers["zg-res-key"]))["text"] == signed_text(body, data)
    # A field the route does not know never reaches the backend.
    status, _, data = await post(
        service, "/audio/speech", b'{"input": "x", "unknown": 1}', "application/json"
    )
    assert (status, json.loads(data)["error"]["code"]) == (400, "unsupported_parameter")


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/embeddings", b'{"input": []}', "application/json"),
        ("/images/generations", b'{"prompt": "x", "n": 0}', "application/json"),
        ("/audio/transcriptions", b"--x\r\n", "multipart/form-data; boundary=x"),
        ("/audio/transcriptions", b"{}", "application/json"),
        ("/images/edits", upload({"prompt": "x"}, {}), f"multipart/form-data; boundary={BOUNDARY}"),
    ],
)
async def test_bad_requests_never_reach_the_backend(
    media: tuple[RunningService, MediaBackend], path: str, body: bytes, content_type: str
) -> None:
    service, backend = media
    status, _, data = await post(service, path, body, content_type)
    assert status == 400, data
    assert backend.requests == []


async def test_token_list_embeddings_are_refused_unless_the_backend_takes_them(
    start_service: StartService,
) -> None:
    """llama.cpp answers embeddings of token-id lists with a 500: refused by default (400)."""
    async with MediaBackend() as backend:
        service = await start_service(target_url=backend.url, allowed_params=[])
        body = json.dumps({"model": "m", "input": [[1, 2, 3], [4, 5]]}).encode()
        status, _, data = await post(service, "/embeddings", body, "application/json")
        assert status == 400, data
        assert json.loads(data)["error"]["code"] == "unsupported_parameter"
        assert not [r for r in backend.requests if r[0].endswith("/embeddings")]  # nothing forwarded
