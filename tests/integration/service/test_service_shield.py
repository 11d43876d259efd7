"""The service as the provider's shield: only known routes and fields reach the backend, capped."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.fakes.openai_backend import FakeOpenAIBackend
from tests.integration.service.conftest import RunningService, StartService

MESSAGES = [{"role": "user", "content": "hello"}]


async def raw_request(
    service: RunningService, target: bytes, body: bytes = b"", method: bytes = b"GET"
) -> Any:
    """Status and JSON of one request whose target goes out byte for byte (clients normalise paths)."""
    parts = urlsplit(service.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    writer.write(head % (method, target, len(body)) + body)
    data = await reader.read()
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_the_backend_gets_the_checked_request_capped(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    # Defect 1: {"max_completion_tokens": 1, "max_tokens": 400} reserved 1 token and generated 400.
    service = await start_service(target_url=fake_backend.url, max_output_tokens=100)
    body = b'{"messages":[{"role":"user","content":"hi"}], "max_completion_tokens":1, "max_tokens":400}'
    status, headers, answer = await service.post("/chat/completions", body)
    assert status == 200
    sent = json.loads(fake_backend.requests[-1])
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (1, 1)
    assert headers["zg-prompt-tokens"] == str(json.loads(answer)["usage"]["prompt_tokens"])
    async with aiohttp.ClientSession() as session:
        for limit, expected in (("7", 7), ("100000", 100), ("junk", 100)):
            plain = {"messages": MESSAGES}
            async with session.post(
                service.v1 + "/chat/completions", json=plain, headers={"zg-output-limit": limit}
            ) as resp:
                assert resp.status == 200
            assert json.loads(fake_backend.requests[-1]) == {**plain, "max_tokens": expected}


async def test_unknown_refused_and_bad_fields_never_reach_the_backend(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url, refused_params=["logit_bias"])
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/chat/completions", {"messages": MESSAGES, "grammar": "root ::= [a"}, "grammar"),
        ("/chat/completions", {"messages": MESSAGES, "logit_bias": {"1": 1}}, "logit_bias"),
        ("/chat/completions", {"messages": MESSAGES, "n_predict": 1000}, "n_predict"),
        ("/chat/completions", {"messages": "x"}, "messages"),
        ("/chat/completions", {"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ("/chat/completions", {"messages": MESSAGES, "top_k": -5}, "top_k"),
        ("/chat/completions", {"messages": MESSAGES, "max_tokens": 1e30}, "max_tokens"),
        ("/completions", {"messages": MESSAGES}, "messages"),
        ("/completions", {"prompt": {"a": 1}}, "prompt"),
    ]
    seen = len(fake_backend.requests)
    async with aiohttp.ClientSession() as session:
        for path, body, param in cases:
            async with session.post(service.v1 + path, json=body) as resp:
                error = (await resp.json())["error"]
                assert resp.status == 400, body
                assert error["param"] == param
                assert error["code"] in ("unsupported_parameter", "invalid_parameter", "invalid_output_limit")
        for data, code in (
            (b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
            (json.dumps({"messages": MESSAGES}).encode("utf-16"), "invalid_json"),
            (b'{"messages": [], "messages": [{"role": "user", "content": "x"}]}', "invalid_json"),
        ):
            async with session.post(service.v1 + "/chat/completions", data=data) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == code
    assert len(fake_backend.requests) == seen


async def test_backend_errors_are_relayed_clean(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    # Defect 3: backend errors came back with their file paths, tracebacks and 5xx statuses.
    service = await start_service(target_url=fake_backend.url)
    detail = {"detail": [{"loc": ["body", "messages", 0], "msg": "bad role", "input": "x" * 5000}]}
    leaky = 'invalid value\n  File "/srv/llama_cpp/server/app.py", line 376, in create\n' + "x" * 2000
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"status": 422, "raw_error": json.dumps(detail)}, 400, "bad role"),
        ({"status": 400, "raw_error": leaky}, 400, "invalid value"),
        ({"status": 400}, 400, "fake failure"),
        ({"status": 500, "raw_error": "Traceback (most recent call last): /srv/x.py"}, 502, "HTTP 500"),
        ({"status": 503}, 502, "HTTP 503"),
        ({"status": 307, "raw_error": "moved"}, 502, "HTTP 307"),
    ]
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            for fake, status, says in cases:
                body = {"messages": MESSAGES, "stream": stream, "fake": fake}
                async with session.post(service.v1 + "/chat/completions", json=body) as resp:
                    error = (await resp.json())["error"]
                    assert resp.status == status, fake
                    assert says in error["message"]
                    assert "/srv" not in error["message"]
                    assert "File" not in error["message"]
                    assert len(error["message"]) < 400
                    assert "ZG-Res-Key" not in resp.headers


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/chat/completions/",
        b"/v1//chat/completions",
        b"/v1/./chat/completions",
        b"/v1/x/../chat/completions",
        b"/v1/chat/%63ompletions",
        b"/v1\\chat\\completions",
        b"//v1/chat/completions",
    ],
)
async def test_a_route_has_one_spelling(
    target: bytes, fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    # Defect 6: /v1/chat/completions/ answered 307, which a client followed past the broker's billing.
    service = await start_service(target_url=fake_backend.url)
    body = json.dumps({"messages": MESSAGES}).encode()
    status, error = await raw_request(service, target, body, b"POST")
    assert status == 404
    assert error["error"]["code"] == "route_not_found"
    status, _ = await raw_request(service, b"/v1/chat/completions", body, b"POST")
    assert status == 200
    assert len(fake_backend.requests) == 1


async def test_lookup_parameters_are_checked(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    # Defect 7: query parameters of /attestation/report and /signature are validated, never a 500.
    service = await start_service(target_url=fake_backend.url)
    address = await service.signing_address()
    nonce = "ab" * 32
    bad = [
        f"/v1/attestation/report?nonce={nonce}&nonce={nonce}",
        "/v1/attestation/report?nonce=zz",
        "/v1/attestation/report?nonce=%00",
        "/v1/attestation/report?signing_address=0x123",
        f"/v1/attestation/report?signing_address={address}&signing_address={address}",
        "/v1/attestation/report?signing_algo=rsa",
        "/v1/attestation/report?signing_algo=%ff%fe",
        "/v1/signature/chatcmpl-1?signing_algo=rsa",
        "/v1/signature/" + "a" * 129,
    ]
    for target in bad:
        status, error = await raw_request(service, target.encode())
        assert status == 400, target
        assert error["error"]["type"] == "invalid_request_error"
    good = f"/v1/attestation/report?nonce={nonce}&signing_address={address.lower()}&signing_algo=ECDSA"
    status, report = await raw_request(service, good.encode())
    assert status == 200
    assert report["request_nonce"] == nonce
    for path in (b"/v1/signature/a%2fb", b"/v1/signature/..", b"/signature/x/y"):
        status, error = await raw_request(service, path)
        assert status == 404
        assert error["error"]["code"] == "route_not_found"
