"""The model-server supervisor, run on the fake backend instead of llama.cpp (same HTTP surface)."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

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
