"""The model-server supervisor, run on the fake backend instead of llama.cpp (same HTTP surface)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import deque

import aiohttp
import pytest

from tests.integration.service.conftest import StartService
from zgserve.service.llama import LlamaConfig, LlamaServer


class FakeModelServer(LlamaServer):
    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.fakes.openai_backend", "--port", str(self.port)]


async def models_status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as resp:
        return resp.status


async def test_a_dead_model_server_is_restarted_and_stopped_cleanly() -> None:
    server = FakeModelServer(LlamaConfig(start_timeout_s=30))
    await server.start()
    try:
        assert await models_status(server.base_url) == 200
        first = server._proc
        assert first is not None
        first.kill()
        for _ in range(200):
            if server.restarts == 1:
                break
            await asyncio.sleep(0.05)
        assert server._proc is not first
        assert await models_status(server.base_url) == 200
    finally:
        await server.stop()
    assert server._proc is not None
    assert server._proc.returncode is not None


async def test_a_server_that_cannot_start_is_reported() -> None:
    class Broken(LlamaServer):
        def command(self) -> list[str]:
            return [sys.executable, "-c", "raise SystemExit(3)"]

    with pytest.raises(RuntimeError, match="exited with code 3"):
        await Broken(LlamaConfig(start_timeout_s=30)).start()


async def test_a_model_server_killed_again_and_again_is_still_restarted_stand_in(
    start_service: StartService,
) -> None:
    # Defect 4: after max_restarts deaths (a few poisoned requests) the supervisor gave up for good
    # and the service answered 503 until someone restarted it. The fake backend stands in for llama.cpp.
    config = LlamaConfig(
        start_timeout_s=30, restart_window_s=60, max_restarts_per_window=2, restart_delay_s=0.05
    )
    server = FakeModelServer(config)
    await server.start()
    try:
        service = await start_service(target_url=server.base_url)
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        for kill in range(1, 8):
            proc = server._proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            for _ in range(400):
                if server.restarts == kill:
                    break
                await asyncio.sleep(0.05)
            assert server.restarts == kill
            status, _, _ = await service.post("/chat/completions", body)
            assert status == 200
    finally:
        await server.stop()


async def test_restarts_past_the_rate_wait_longer_and_never_stop() -> None:
    server = LlamaServer(
        LlamaConfig(restart_window_s=10, max_restarts_per_window=2, restart_delay_s=1, max_backoff_s=8)
    )
    recent: deque[float] = deque()
    delays = []
    delay = 0.0
    for _ in range(7):
        delay = server._next_delay(recent, delay)
        delays.append(delay)
    assert delays == [1, 1, 2, 4, 8, 8, 8]
    recent.clear()  # a quiet window: back to the plain delay
    assert server._next_delay(recent, delay) == 1
