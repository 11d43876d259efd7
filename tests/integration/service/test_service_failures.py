"""Errors come back as OpenAI-shaped JSON with the right status; cut streams have no signature."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets

import aiohttp
import openai
import pytest

from tests.fakes.openai_backend import FakeOpenAIBackend
from tests.integration.service.conftest import StartService
from zgserve.client.verify import verify_report_local
from zgserve.common.net import free_port

MESSAGES = [{"role": "user", "content": "hello"}]


def assert_error_shape(body: dict[str, object], code: str | None = None) -> None:
    error = body["error"]
    assert isinstance(error, dict)
    assert {"message", "type", "param", "code"} <= set(error)
    if code is not None:
        assert error["code"] == code


async def test_backend_errors_keep_their_status(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    async with service.openai() as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(
                model="m", messages=MESSAGES, extra_body={"fake": {"status": 429}}
            )
        assert limited.value.status_code == 429
        assert "fake failure" in str(limited.value)
    async with aiohttp.ClientSession() as session:
        body = {"messages": MESSAGES, "fake": {"status": 500, "raw_error": "Traceback: boom"}}
        async with session.post(service.v1 + "/chat/completions", json=body) as resp:
            assert resp.status == 502
            assert "ZG-Res-Key" not in resp.headers
            error = await resp.json()
            assert_error_shape(error, "upstream_error")
            assert "boom" not in error["error"]["message"]
        body = {"messages": MESSAGES, "stream": True, "fake": {"status": 400}}
        async with session.post(service.v1 + "/chat/completions", json=body) as resp:
            assert resp.status == 400
            assert_error_shape(await resp.json(), "fake")


async def test_backend_down_is_503_json(start_service: StartService) -> None:
    service = await start_service(target_url=f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            body = {"messages": MESSAGES, "stream": stream}
            async with session.post(service.v1 + "/chat/completions", json=body) as resp:
                assert resp.status == 503
                assert_error_shape(await resp.json(), "upstream_unavailable")
        async with session.get(service.v1 + "/models") as resp:
            assert resp.status == 503
            assert_error_shape(await resp.json())


async def test_bad_requests(fake_backend: FakeOpenAIBackend, start_service: StartService) -> None:
    service = await start_service(target_url=fake_backend.url, max_request_bytes=2048)
    async with aiohttp.ClientSession() as session:
        cases = [
            (b"{not json", 400),
            (b'{"stream": "yes"}', 400),
            (b"[]", 400),
            (b"{" + b" " * 4096 + b"}", 413),
        ]
        for data, status in cases:
            async with session.post(service.v1 + "/chat/completions", data=data) as resp:
                assert resp.status == status, data[:20]
                assert_error_shape(await resp.json())
        async with session.get(service.v1 + "/nothing-here") as resp:
            assert resp.status == 404
            assert_error_shape(await resp.json(), "route_not_found")
        async with session.get(service.v1 + "/chat/completions") as resp:
            assert resp.status == 405
            assert_error_shape(await resp.json())


async def test_client_cutting_a_stream_gets_no_signature(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    body = {"messages": MESSAGES, "stream": True, "fake": {"chunks": 40, "chunk_delay_ms": 50}}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(service.v1 + "/chat/completions", json=body)
        response_id = resp.headers["ZG-Res-Key"]
        first = await resp.content.readany()
        assert first.startswith(b"data: ")
        resp.close()  # the client goes away mid-stream
    for _ in range(100):
        status, error = await service.get_json(f"/v1/signature/{response_id}")
        if error["error"]["code"] == "response_incomplete":
            break
        await asyncio.sleep(0.05)
    assert status == 404
    assert_error_shape(error, "response_incomplete")
    assert "client disconnected" in error["error"]["message"]


async def test_upstream_dying_mid_stream_ends_with_an_error_event(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    request = json.dumps(
        {"messages": MESSAGES, "stream": True, "fake": {"chunks": 10, "die_after": 3}}
    ).encode()
    status, headers, received = await service.post("/chat/completions", request)
    assert status == 200
    response_id = headers["ZG-Res-Key"]
    events = [e for e in received.split(b"\n\n") if e]
    assert len(events) == 5
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2][len(b"data: ") :])
    assert_error_shape(error, "upstream_stream_error")
    assert all(b'"usage"' not in e for e in events)  # a broken answer carries no usage to bill
    status, record = await service.get_json(f"/v1/signature/{response_id}")
    assert status == 200
    assert record["text"].split(":")[1] == hashlib.sha256(received).hexdigest()


async def test_stream_that_breaks_before_its_first_event_is_502(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    body = {"messages": MESSAGES, "stream": True, "fake": {"die_after": 0}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(service.v1 + "/chat/completions", json=body) as resp,
    ):
        assert resp.status == 502
        assert_error_shape(await resp.json(), "upstream_error")


async def test_signature_lookups(fake_backend: FakeOpenAIBackend, start_service: StartService) -> None:
    service = await start_service(target_url=fake_backend.url)
    for path in ("/signature/chatcmpl-unknown", "/v1/signature/chatcmpl-unknown"):
        status, body = await service.get_json(path)
        assert status == 404
        assert_error_shape(body, "signature_not_found")
        assert "unknown" in body["error"]["message"]
        assert "24 h" in body["error"]["message"]
    status, body = await service.get_json("/v1/signature/x?signing_algo=ed25519")
    assert status == 400


async def test_attestation_report_endpoints(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    address = await service.signing_address()
    nonce = secrets.token_bytes(32)
    for prefix in ("", "/v1"):
        status, report = await service.get_json(
            f"{prefix}/attestation/report?nonce={nonce.hex()}&signing_algo=ecdsa&signing_address={address.lower()}"
        )
        assert status == 200
        assert report["request_nonce"] == nonce.hex()
        assert report["signing_address"] == address
        assert report["tee"] == "simulated"
        assert report["intel_quote"] == ""
        assert json.loads(report["nvidia_payload"])["simulated"] is True
        result = verify_report_local(report, nonce, expected_address=address)
        assert not result.verified
        assert "TEE hardware evidence" in {c.name for c in result.failed}
    for bad in ("abc", "zz" * 32, "ab" * 33):
        status, body = await service.get_json(f"/v1/attestation/report?nonce={bad}")
        assert status == 400
        assert_error_shape(body)
    status, body = await service.get_json(f"/v1/attestation/report?signing_address=0x{'11' * 20}")
    assert status == 404
    assert_error_shape(body, "unknown_signing_address")


async def test_models_and_health(fake_backend: FakeOpenAIBackend, start_service: StartService) -> None:
    service = await start_service(target_url=fake_backend.url)
    async with service.openai() as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model"]
    for path in ("/health", "/v1/health"):
        status, health = await service.get_json(path)
        assert status == 200
        assert health["status"] == "ok"
        assert health["tee"] == "simulated"


async def test_backend_silence_times_out(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url, read_timeout_s=0.3)
    silent = json.dumps({"messages": MESSAGES, "fake": {"delay_ms": 1500}}).encode()
    status, _, body = await service.post("/chat/completions", silent)
    assert status == 502
    assert_error_shape(json.loads(body), "upstream_timeout")
    stalled = json.dumps(
        {"messages": MESSAGES, "stream": True, "fake": {"chunks": 3, "chunk_delay_ms": 1000}}
    )
    status, _, body = await service.post("/chat/completions", stalled.encode())
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert_error_shape(json.loads(events[-2][len(b"data: ") :]), "upstream_stream_error")


async def test_backend_connections_are_reused(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    for i in range(10):
        request = json.dumps({"messages": MESSAGES, "stream": i % 2 == 1, "fake": {"chunks": 3}}).encode()
        status, _, _ = await service.post("/chat/completions", request)
        assert status == 200
    assert len(fake_backend.peers) == 1  # one keep-alive connection served all ten
