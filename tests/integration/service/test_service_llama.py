"""End to end with llama.cpp and SmolLM2: usage always present and equal to the tokenizer's count."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from pathlib import Path
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
    # Defect 5: the streamed answer was billed by re-tokenising its text (31 tokens where the same
    # answer non-streamed reported 92). Events are counted now: the same request costs the same.
    service = await start_service(target_url=llama_server.base_url)
    params: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "max_tokens": 48, "temperature": 0, "seed": 7}
    poem: list[Any] = [{"role": "user", "content": "Write a short poem about the sea, with unusual words."}]
    async with service.openai() as client:
        plain = await client.chat.completions.with_raw_response.create(messages=poem, **params)
        async with client.chat.completions.with_streaming_response.create(
            messages=poem, stream=True, **params
        ) as resp:
            received = b"".join([chunk async for chunk in resp.iter_bytes()])
            request, response_id = resp.http_request.content, resp.headers["zg-res-key"]
            prompt_header = resp.headers["zg-prompt-tokens"]
    plain_usage = plain.parse().usage
    assert plain_usage is not None
    assert plain.headers["zg-prompt-tokens"] == str(plain_usage.prompt_tokens)
    events = [json.loads(e[6:]) for e in received.split(b"\n\n") if e.startswith(b"data: {")]
    assert received.endswith(b"data: [DONE]\n\n")
    usage_chunks = [e for e in events if e.get("usage")]
    assert len(usage_chunks) == 1
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0] is events[-1]
    usage = usage_chunks[0]["usage"]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text == plain.parse().choices[0].message.content
    assert usage["completion_tokens"] == plain_usage.completion_tokens
    assert usage["prompt_tokens"] == plain_usage.prompt_tokens == int(prompt_header)
    assert usage["prompt_tokens"] == await tokens(llama_server, messages=poem)
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
        plain = await client.completions.create(
            model="SmolLM2-135M-Instruct", prompt=prompt, max_tokens=8, temperature=0
        )
    events = [json.loads(e[6:]) for e in received.split(b"\n\n") if e.startswith(b"data: {")]
    usage = events[-1]["usage"]
    assert plain.usage is not None
    assert usage["prompt_tokens"] == await tokens(llama_server, prompt=prompt, add_special_tokens=True)
    assert usage["prompt_tokens"] == plain.usage.prompt_tokens
    assert usage["completion_tokens"] == plain.usage.completion_tokens
    await assert_signed(service, response_id, request, received)


async def test_llama_generates_no_more_than_the_cap(
    llama_server: LlamaServer, start_service: StartService
) -> None:
    # Defect 1: the broker reserved max_completion_tokens (1) while llama.cpp generated max_tokens (400).
    service = await start_service(target_url=llama_server.base_url, max_output_tokens=8)
    story: list[Any] = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    async with service.openai() as client:
        for _ in range(5):
            tricky = await client.chat.completions.create(
                model="SmolLM2-135M-Instruct",
                messages=story,
                max_tokens=400,
                extra_body={"max_completion_tokens": 1},
            )
            assert tricky.usage is not None
            assert tricky.usage.completion_tokens <= 1
        bare = await client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=story)
        assert bare.usage is not None
        assert 1 <= bare.usage.completion_tokens <= 8
        async with client.chat.completions.with_streaming_response.create(
            model="SmolLM2-135M-Instruct", messages=story, stream=True
        ) as resp:
            received = b"".join([chunk async for chunk in resp.iter_bytes()])
    usage = json.loads(received.split(b"\n\n")[-3][6:])["usage"]
    assert 1 <= usage["completion_tokens"] <= 8


def _model_server_pid() -> int | None:
    """The embedded model server started by this test process (a direct child)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and b"zgserve.service.llama_server" in cmdline:
            return int(entry.name)
    return None


async def test_the_embedded_model_server_survives_being_killed_again_and_again(
    start_service: StartService, tmp_path: Path
) -> None:
    # Defect 4: a few requests that crash llama.cpp exhausted its restarts; the service then
    # answered 503 for good. Each SIGKILL here stands for such a crash.
    llama = {"n_threads": 1, "restart_delay_s": 0.1, "max_restarts_per_window": 2, "log_path": tmp_path / "l"}
    service = await start_service(target_url=None, llama=llama)
    body = json.dumps({"messages": MESSAGES, "max_tokens": 2}).encode()
    for _ in range(6):
        pid = _model_server_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(600):
            await asyncio.sleep(0.1)
            new = _model_server_pid()
            if new not in (None, pid):
                status, _, _ = await service.post("/chat/completions", body)
                if status == 200:
                    break
        else:
            pytest.fail("the model server did not come back")
