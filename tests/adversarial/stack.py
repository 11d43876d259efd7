"""The adversarial suite's target: a broker and its verifiable service in a process of their own.

``python -m tests.adversarial.stack SPEC.json`` starts, in one event loop (uvloop, httptools,
as ``zgserve broker`` and ``zgserve service`` run): the fake OpenAI backend when
``spec["fake"]`` (else the service starts the embedded llama.cpp SmolLM2 model), the
verifiable service (simulated TEE) in front of it, and the broker with ``spec["broker"]``
as its settings. Every log record goes to ``spec["log"]``, tracebacks included, so the
suite can search it; ``spec["ready"]`` is written once both answer.

A process of its own because some inputs under test used to kill the process (a JSON
depth bomb overflows the C stack): the suite must see that as a failure and go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.broker.app import create_app as create_broker
from zgserve.broker.settings import load_settings as load_broker_settings
from zgserve.common.net import free_port, wait_http
from zgserve.service.app import create_app as create_service
from zgserve.service.server import uvicorn_config
from zgserve.service.settings import load_settings as load_service_settings


def _log_to(path: Path, backend_path: Path) -> None:
    """Everything to ``path``, except the fake backend's own records (aiohttp's server), which go to
    ``backend_path``: the suite searches the broker's and the service's log for tracebacks."""
    form = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.FileHandler(path)
    handler.setFormatter(form)
    handler.addFilter(lambda record: not record.name.startswith("aiohttp"))
    backend = logging.FileHandler(backend_path)
    backend.setFormatter(form)
    logging.getLogger("aiohttp").addHandler(backend)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


@contextlib.asynccontextmanager
async def _server(config: uvicorn.Config) -> Any:
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("a server stopped during start-up (see the log)")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def _media_service(spec: dict[str, Any]) -> Any:
    from tests.fakes.media_backend import MediaBackend

    async with MediaBackend() as backend:
        port = free_port()
        settings = load_service_settings(
            target_url=backend.url,
            tee="simulated",
            gpu_evidence="off",
            store_path=Path(spec["service_store"]).with_suffix(".media.sqlite3"),
            store_flush_interval_s=0.01,
            port=port,
        )
        config = uvicorn_config(create_service(settings), "127.0.0.1", port, loop="none", log_config=None)
        async with _server(config):
            yield f"http://127.0.0.1:{port}"


async def run(spec: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        target = None
        if spec["fake"]:
            target = (await stack.enter_async_context(FakeOpenAIBackend())).url
        service_port = free_port()
        service_settings = load_service_settings(
            target_url=target,
            tee="simulated",
            gpu_evidence="off",
            store_path=Path(spec["service_store"]),
            store_flush_interval_s=0.01,
            port=service_port,
            llama={"n_ctx": 2048, "n_threads": 2, "log_path": spec["llama_log"]},
        )
        service_config = uvicorn_config(
            create_service(service_settings), "127.0.0.1", service_port, loop="none", log_config=None
        )
        await stack.enter_async_context(_server(service_config))
        service_url = f"http://127.0.0.1:{service_port}"
        await wait_http(service_url + "/health", 240, 200)

        broker = dict(spec["broker"])
        if spec.get("media"):
            # Media models: the media backend (espeak-ng speech, stand-ins) behind a service of its own.
            media_url = await stack.enter_async_context(_media_service(spec))
            broker["models"] = [
                {**m, "targetUrl": media_url + "/v1"} if m.get("targetUrl") == "@media" else m
                for m in broker.get("models", [])
            ]
        settings = load_broker_settings(None, **broker, targetUrl=service_url + "/v1")
        broker_config = uvicorn.Config(
            create_broker(settings),
            host="127.0.0.1",
            port=spec["port"],
            loop="none",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=None,
            log_level="warning",
            proxy_headers=False,
        )
        await stack.enter_async_context(_server(broker_config))
        await asyncio.to_thread(Path(spec["ready"]).write_text, json.dumps({"service": service_url}))
        await stop.wait()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    _log_to(Path(spec["log"]), Path(spec["backend_log"]))
    uvloop.run(run(spec))


if __name__ == "__main__":
    main()
