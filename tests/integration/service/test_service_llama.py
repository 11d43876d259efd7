"""End to end with llama.cpp and SmolLM2: usage always present and equal to the tokenizer's count."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiohttp
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.integration.service.conftest import RunningService, StartService
from zgserve.service.llama import LlamaServer

pytestmark = pytest.mark.llama

MESSAGES = [{"role": "user", "content": "Name three colours."}]


async def tokens(llama: LlamaServer, **body: Any) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(llama.base_url + "/tokenize", json=body) as resp,
    ):
        assert resp.status == 200
        return int((await resp.json())["count"])


async def assert_signed(service: RunningService, response_id: str, request: bytes, response: bytes) -> None:
    status, record = await service.get_json(f"/v1/signature/{response_id}")
    assert status == 200
    assert record["text"] == f"{hashlib.sha256(request).hexdigest()}:{hashlib.sha256(response).hexdigest()}"
    recovered = Account.recover_message(encode_defunct(text=record["text"]), signature=record["signature"])
    assert recovered == await service.signing_address()


async def test_non_streamed_chat(llama_server: LlamaServer, start_service: StartService) -> None:
    service = await start_service(target_url=llama_server.base_url)
    async with service.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=16, temperature=0
        )
    completion = raw.parse()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == await tokens(llama_server, messages=MESSAGES)
    text = completion.choices[0].message.content or ""
    assert completion.usage.completion_tokens == await tokens(
        llama_server, prompt=text, add_special_tokens=False
    )
    await assert_signed(service, completion.id, raw.http_request.content, raw.http_response.content)


async def test_streamed_chat_gets_a_counted_usage_chunk(
    llama_server: LlamaServer, start_service: StartService
) -> None:
    service = await start_service(target_url=llama_server.base_url)
    async with service.openai() as client:
        plain = await client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4, temperature=0
        )
        async with client.chat.completions.with_streaming_response.create(
            model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=24, temperature=0, stream=True
        ) as resp:
            received = b"".join([chunk async for chunk in resp.iter_bytes()])
            request, response_id = resp.http_request.content, resp.headers["zg-res-key"]
    events = [json.loads(e[6:]) for e in received.split(b"\n\n") if e.startswith(b"data: {")]
    assert received.endswith(b"data: [DONE]\n\n")
    usage_chunks = [e for e in events if e.get("usage")]
    assert len(usage_chunks) == 1
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0] is events[-1]
    usage = usage_chunks[0]["usage"]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text
    assert usage["completion_tokens"] == await tokens(llama_server, prompt=text, add_special_tokens=False)
    assert plain.usage is not None
    assert usage["prompt_tokens"] == plain.usage.prompt_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "estimated" not in usage
    assert events[0]["id"] == response_id
    await assert_signed(service, response_id, request, received)


async def test_streamed_text_completion(llama_server: LlamaServer, start_service: StartService) -> None:
    service = await start_service(target_url=llama_server.base_url)
    prompt = "The sky is"
    async with (
        service.openai() as client,
        client.completions.with_streaming_response.create(
            model="SmolLM2-135M-Instruct", prompt=prompt, max_tokens=8, temperature=0, stream=True
        ) as resp,
    ):
        received = b"".join([chunk async for chunk in resp.iter_bytes()])
        request, response_id = resp.http_request.content, resp.headers["zg-res-key"]
    events = [json.loads(e[6:]) for e in received.split(b"\n\n") if e.startswith(b"data: {")]
    usage = events[-1]["usage"]
    text = "".join(c.get("text") or "" for e in events for c in e["choices"])
    assert usage["prompt_tokens"] == await tokens(llama_server, prompt=prompt, add_special_tokens=True)
    assert usage["completion_tokens"] == await tokens(llama_server, prompt=text, add_special_tokens=False)
    await assert_signed(service, response_id, request, received)
