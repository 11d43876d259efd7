"""Signed answers, checked by an independent recovery over the bytes the client received."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.fakes.openai_backend import FakeOpenAIBackend, chat_prompt_tokens
from tests.integration.service.conftest import RunningService, StartService

MESSAGES = [{"role": "user", "content": "Say something with accents: héllo ✓ 日本"}]


async def check_signature(service: RunningService, response_id: str, request: bytes, response: bytes) -> None:
    """Recompute both hashes and recover the signer with eth-account; it must be the attested key."""
    status, record = await service.get_json(f"/v1/signature/{response_id}")
    assert status == 200, record
    request_hash, response_hash = record["text"].split(":")
    assert request_hash == hashlib.sha256(request).hexdigest()
    assert response_hash == hashlib.sha256(response).hexdigest()
    recovered = Account.recover_message(encode_defunct(text=record["text"]), signature=record["signature"])
    assert recovered == record["signing_address"] == await service.signing_address()
    assert record["signing_algo"] == "ecdsa"


def sse_data(body: bytes) -> list[Any]:
    events = [e for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    return [e[6:].decode() if e == b"data: [DONE]" else json.loads(e[6:]) for e in events]


async def test_non_streamed_answer_is_signed_over_the_exact_bytes(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    async with service.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES, extra_body={"fake": {"text": "héllo ✓ 日本 answer"}}
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == "héllo ✓ 日本 answer"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 4
        assert raw.headers["zg-res-key"] == completion.id
        assert "ZG-Res-Key" in raw.headers["access-control-expose-headers"]
        request_bytes = raw.http_request.content
        # The backend got what the service read, re-serialised and capped; the client's bytes are signed.
        assert json.loads(fake_backend.requests[-1]) == {**json.loads(request_bytes), "max_tokens": 4096}
        assert raw.headers["zg-prompt-tokens"] == str(completion.usage.prompt_tokens)
        await check_signature(service, completion.id, request_bytes, raw.http_response.content)


async def test_streamed_answer_is_signed_and_passed_through_byte_for_byte(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    async with service.openai() as client:
        fake = {"chunks": 12, "write_size": 7, "chunk_delay_ms": 1, "text": "un deux trois ✓"}
        async with client.chat.completions.with_streaming_response.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"fake": fake},
        ) as resp:
            received = b"".join([chunk async for chunk in resp.iter_bytes()])
            request_bytes = resp.http_request.content
            response_id = resp.headers["zg-res-key"]
        events = sse_data(received)
        assert events[-1] == "[DONE]"
        assert events[0]["id"] == response_id
        assert [e["usage"]["completion_tokens"] for e in events[:-1] if e.get("usage")] == [4]
        assert (
            "".join(c["delta"].get("content", "") for e in events[:-1] for c in e["choices"]) == fake["text"]
        )
        await check_signature(service, response_id, request_bytes, received)


async def test_usage_chunk_added_when_the_backend_sends_none(
    fake_backend_no_usage: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend_no_usage.url)
    body = {"model": "fake-model", "messages": MESSAGES, "fake": {"chunks": 9}}
    async with aiohttp.ClientSession() as session:
        async with session.post(service.v1 + "/chat/completions", json=body) as resp:
            plain = await resp.json()
        request = json.dumps({**body, "stream": True}).encode()
        async with session.post(service.v1 + "/chat/completions", data=request) as resp:
            received = await resp.read()
            response_id = resp.headers["ZG-Res-Key"]
    events = sse_data(received)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["id"] == response_id
    assert usage_chunk["usage"] == plain["usage"]  # counted with the backend's tokenizer: same as its own
    assert "stream_options" not in json.loads(request)  # the client's bytes were not what went upstream
    assert json.loads(fake_backend_no_usage.requests[-1])["stream_options"] == {"include_usage": True}
    await check_signature(service, response_id, request, received)


async def test_text_completions_are_signed_too(
    fake_backend_no_usage: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend_no_usage.url)
    async with service.openai() as client:
        raw = await client.completions.with_raw_response.create(model="fake-model", prompt="one two three")
        completion = raw.parse()
        await check_signature(service, completion.id, raw.http_request.content, raw.http_response.content)
        async with client.completions.with_streaming_response.create(
            model="fake-model", prompt="one two three", stream=True, extra_body={"fake": {"chunks": 5}}
        ) as resp:
            received = b"".join([chunk async for chunk in resp.iter_bytes()])
            response_id, request = resp.headers["zg-res-key"], resp.http_request.content
        usage = sse_data(received)[-2]
        assert usage["object"] == "text_completion"
        assert usage["usage"]["completion_tokens"] == 5
        assert usage["usage"]["prompt_tokens"] == 3
        await check_signature(service, response_id, request, received)


async def test_a_backend_without_ids_gets_generated_ones(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    request = json.dumps({"messages": MESSAGES, "fake": {"no_id": True}}).encode()
    _, headers, body = await service.post("/chat/completions", request)
    header_id = headers["ZG-Res-Key"]
    assert json.loads(body)["id"] == header_id
    assert header_id.startswith("chatcmpl-")
    assert len(header_id) == len("chatcmpl-") + 32
    await check_signature(service, header_id, request, body)


async def test_200_concurrent_mixed_requests_all_signed(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    rng = random.Random(3)

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[str, bytes, bytes]:
        stream = rng.random() < 0.5
        chat = rng.random() < 0.7
        fake = {"chunks": rng.randint(1, 20), "delay_ms": rng.randint(0, 20)}
        if stream and rng.random() < 0.5:
            fake["write_size"] = rng.randint(5, 60)
        body: dict[str, Any] = {"model": "fake-model", "stream": stream, "fake": fake, "user": f"u{i}"}
        if chat:
            body["messages"] = [{"role": "user", "content": f"request {i}"}]
        else:
            body["prompt"] = f"request {i}"
        request = json.dumps(body).encode()
        path = "/chat/completions" if chat else "/completions"
        async with session.post(service.v1 + path, data=request) as resp:
            assert resp.status == 200
            return resp.headers["ZG-Res-Key"], request, await resp.read()

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(200)))
    assert len({response_id for response_id, _, _ in results}) == 200
    await asyncio.gather(*(check_signature(service, *result) for result in results))


async def test_signatures_survive_a_restart(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    first = await start_service(target_url=fake_backend.url)
    request = json.dumps({"messages": MESSAGES}).encode()
    _, headers, body = await first.post("/chat/completions", request)
    response_id = headers["ZG-Res-Key"]
    old_address = await first.signing_address()
    await first.stop()
    second = await start_service(target_url=fake_backend.url, store_path=first.settings.store_path)
    assert await second.signing_address() != old_address  # a new key per start in simulated mode
    status, record = await second.get_json(f"/signature/{response_id}")
    assert status == 200
    assert record["signing_address"] == old_address
    assert record["text"].split(":")[1] == hashlib.sha256(body).hexdigest()


async def test_answers_without_usage_get_it_counted_and_signed(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    for fake in ({"no_usage": True, "chunks": 6}, {"json_for_stream": True, "no_usage": True, "chunks": 6}):
        request = json.dumps(
            {"messages": MESSAGES, "stream": "json_for_stream" in fake, "fake": fake}
        ).encode()
        status, headers, body = await service.post("/chat/completions", request)
        assert status == 200
        answer = json.loads(body)
        prompt = chat_prompt_tokens(MESSAGES)
        assert answer["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": 6,
            "total_tokens": prompt + 6,
        }
        assert answer["id"] == headers["ZG-Res-Key"]
        await check_signature(service, answer["id"], request, body)


async def test_a_stream_is_billed_the_tokens_it_generated_stand_in(
    fake_backend_no_usage: FakeOpenAIBackend, start_service: StartService
) -> None:
    # Defect 5: streamed usage came from re-tokenising the text, so an answer generated in pieces the
    # tokenizer would merge ("hel", "lo") was billed less than the same answer non-streamed. The fake
    # stands in for llama.cpp: one event per generated token, no usage in streams.
    service = await start_service(target_url=fake_backend_no_usage.url)
    fake = {"pieces": ["hel", "lo ", "wor", "ld", " again"]}
    body = {"model": "fake-model", "messages": MESSAGES, "fake": fake}
    plain_status, plain_headers, plain = await service.post("/chat/completions", json.dumps(body).encode())
    assert plain_status == 200
    usage = json.loads(plain)["usage"]
    assert usage["completion_tokens"] == 5
    assert plain_headers["zg-prompt-tokens"] == str(usage["prompt_tokens"])
    request = json.dumps({**body, "stream": True}).encode()
    status, headers, received = await service.post("/chat/completions", request)
    assert status == 200
    streamed = sse_data(received)[-2]["usage"]
    assert streamed == usage
    # Counted before the first byte went out, so a broker can bill the prompt of a cut stream.
    assert headers["zg-prompt-tokens"] == str(chat_prompt_tokens(MESSAGES))
    await check_signature(service, headers["ZG-Res-Key"], request, received)
