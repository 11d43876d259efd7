"""Real servers on ephemeral loopback ports: the fake backend, the service, the embedded model.

* ``fake_backend`` / ``fake_backend_no_usage``: :class:`FakeOpenAIBackend`, honouring
  ``stream_options.include_usage`` or ignoring it like llama.cpp does.
* ``start_service``: ``await start_service(target_url=..., **settings)`` runs the service
  app under uvicorn in the test's event loop and returns a :class:`RunningService`
  (``allowed_params`` defaults to ``["fake"]``, the fake backend's behaviour field).
* ``llama_server`` (session): the embedded llama.cpp server with SmolLM2, started once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import uvicorn
from multidict import CIMultiDict

from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.common.net import free_port, wait_http
from zgserve.service.app import ServiceDeps, create_app
from zgserve.service.llama import LlamaConfig, LlamaServer
from zgserve.service.server import uvicorn_config
from zgserve.service.settings import ServiceSettings


@dataclass
class RunningService:
    url: str
    settings: ServiceSettings
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Shut down as on SIGTERM (lifespan shutdown included) and wait for it."""
        self.server.should_exit = True
        await asyncio.wait_for(asyncio.shield(self.task), 30)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key="unused", max_retries=0, timeout=60)

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def post(self, path: str, data: bytes) -> tuple[int, CIMultiDict[str], bytes]:
        """Status, headers (case-insensitive) and the exact body bytes of one POST under /v1."""
        async with aiohttp.ClientSession() as session, session.post(self.v1 + path, data=data) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()

    async def signing_address(self) -> str:
        status, report = await self.get_json("/v1/attestation/report")
        assert status == 200
        return str(report["signing_address"])


StartService = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def fake_backend() -> AsyncIterator[FakeOpenAIBackend]:
    async with FakeOpenAIBackend() as fake:
        yield fake


@pytest.fixture
async def fake_backend_no_usage() -> AsyncIterator[FakeOpenAIBackend]:
    async with FakeOpenAIBackend(stream_usage=False) as fake:
        yield fake


@contextlib.asynccontextmanager
async def run_service(
    settings: ServiceSettings, deps: ServiceDeps | None = None
) -> AsyncIterator[RunningService]:
    config = uvicorn_config(
        create_app(settings, deps), "127.0.0.1", settings.port, log_level="warning", loop="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_http(url + "/health", 30, 200)
        yield RunningService(url, settings, server, task)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[StartService]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(deps: ServiceDeps | None = None, **overrides: Any) -> RunningService:
            values: dict[str, Any] = {
                "port": free_port(),
                "tee": "simulated",
                "gpu_evidence": "off",
                "store_path": tmp_path / "signatures.sqlite3",
                "store_flush_interval_s": 0.01,
                # The fake backend takes its behaviour from a "fake" object in the body.
                "allowed_params": ["fake"],
            }
            values.update(overrides)
            return await stack.enter_async_context(run_service(ServiceSettings(**values), deps))

        yield start


@pytest.fixture(scope="session")
async def llama_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    async with LlamaServer(LlamaConfig(n_ctx=2048, n_threads=2, log_path=log)) as server:
        yield server
