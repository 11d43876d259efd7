"""Billing against the real model (llama.cpp, SmolLM2): the caps hold, cut streams pay their prompt,
and, last of the session, the settlement of everything recorded is never PARTIAL."""

from __future__ import annotations

import asyncio
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.adversarial import rawhttp
from tests.adversarial.conftest import ADMIN_TOKEN, LLAMA_OUTPUT_LIMIT, Stack, Tally
from zgserve.devnet.network import Devnet

CHAT = "/v1/proxy/chat/completions"
COMPLETIONS = "/v1/proxy/completions"
STORY = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]
# (path, body, the most completion tokens one answer may be billed for)
BURST: list[tuple[str, dict[str, Any], int]] = [
    *[(CHAT, {"messages": STORY, "max_completion_tokens": 1, "max_tokens": 400}, 1)] * 6,
    *[(COMPLETIONS, {"prompt": "Once upon a time", "max_completion_tokens": 1, "max_tokens": 400}, 1)] * 2,
    *[(CHAT, {"messages": STORY, "n": 2, "max_tokens": 12}, 24)] * 2,
    *[(CHAT, {"messages": [{"role": "user", "content": "Say hi."}]}, LLAMA_OUTPUT_LIMIT)] * 2,
]


def _usage(body: bytes) -> dict[str, Any] | None:
    try:
        usage = json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


@pytest.mark.llama
async def test_overdraft_burst_with_mixed_caps(llama_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    """Concurrent requests whose cap fields disagree, against 1 0G: never past the cap or the balance."""
    stack = llama_stack
    mark = tally.snapshot()
    token = stack.token(0)

    def send(case: tuple[str, dict[str, Any], int]) -> None:
        path, body, cap = case
        what = f"burst {path} {body}"
        headers = [("Authorization", token), ("Content-Type", "application/json")]
        reply = stack.send(
            "POST", path, headers=headers, body=json.dumps(body).encode(), what=what, timeout=180
        )
        if reply.status == 200:
            usage = _usage(reply.body) or {}
            record = stack.record(reply.header("zg-res-key") or "")
            billed = record["output_tokens"] if record else 0
            if max(billed, int(usage.get("completion_tokens") or 0)) > cap:
                tally.add("over_cap", f"{billed} completion tokens billed (cap {cap}) for {what}")

    def burst() -> None:
        with ThreadPoolExecutor(len(BURST)) as pool:
            list(pool.map(send, BURST))

    await asyncio.to_thread(burst)
    await stack.after_batch(devnet)
    tally.assert_clean(mark)


def _first_event_then_hang_up(stack: Stack, path: str, body: dict[str, Any]) -> str | None:
    """Send a stream request, read up to its first event, close the socket; the answer's key."""
    tally = stack.tally
    tally.add("inputs")
    headers = [("Authorization", stack.token(1)), ("Content-Type", "application/json")]
    data = rawhttp.build("POST", path, headers, json.dumps(body).encode(), f"127.0.0.1:{stack.port}")
    with rawhttp.connect(stack.port, 120) as sock:
        sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got or b"data:" not in got.partition(b"\r\n\r\n")[2]:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        sock.shutdown(socket.SHUT_RDWR)
    reply = rawhttp.parse(got)
    if reply.status >= 500:
        stack.judge(reply, f"cut stream {path}")
    return reply.header("zg-res-key")


@pytest.mark.llama
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_cut_stream_pays_its_prompt(
    llama_stack: Stack, tally: Tally, devnet: Devnet, path: str
) -> None:
    """A client that hangs up after the first event still pays the prompt the model read."""
    stack = llama_stack
    mark = tally.snapshot()
    text = " ".join(f"word{i} and" for i in range(300))
    base: dict[str, Any] = (
        {"messages": [{"role": "user", "content": text}]} if path == CHAT else {"prompt": text}
    )
    # The prompt's real size: the same prompt, answered whole, with usage.
    reference = stack.send(
        "POST",
        path,
        headers=[("Authorization", stack.token(1)), ("Content-Type", "application/json")],
        body=json.dumps(base | {"max_tokens": 1}).encode(),
        timeout=120,
    )
    assert reference.status == 200, reference.body[:300]
    prompt_tokens = int((_usage(reference.body) or {})["prompt_tokens"])

    key = await asyncio.to_thread(
        _first_event_then_hang_up, stack, path, base | {"max_tokens": 40, "stream": True}
    )
    assert key, "the stream carried no ZG-Res-Key"
    record = None
    for _ in range(100):
        record = stack.record(key)
        if record is not None:
            break
        await asyncio.sleep(0.1)
    if record is None:
        tally.add("unbilled_answers", f"no fee record for the cut stream {key} on {path}")
    elif record["input_tokens"] < prompt_tokens:
        tally.add(
            "undercharged",
            f"cut stream on {path}: {record['input_tokens']} of {prompt_tokens} prompt tokens billed",
        )
    await stack.after_batch(devnet)
    tally.assert_clean(mark)


async def _settle(stack: Stack, tally: Tally) -> None:
    reply = await asyncio.to_thread(
        stack.send,
        "POST",
        "/v1/settle",
        headers=[("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Content-Type", "application/json")],
        body=b"{}",
        timeout=180,
    )
    assert reply.status == 200, reply.body[:500]
    report = json.loads(reply.body)
    for entry in report.get("settlements", []):
        if str(entry.get("status")).lower() != "success":
            tally.add("partial_settlements", f"{stack.name}: {json.dumps(entry)[:300]}")


async def test_settlement_after_everything(
    fake_stack: Stack, llama_stack: Stack, tally: Tally, devnet: Devnet
) -> None:
    """Runs last (see conftest): settles what every test recorded; nothing may come back PARTIAL."""
    mark = tally.snapshot()
    for stack in (fake_stack, llama_stack):
        await _settle(stack, tally)
        await stack.after_batch(devnet)
    tally.assert_clean(mark)
