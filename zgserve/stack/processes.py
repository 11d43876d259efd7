"""Supervised child processes: started with their output in a log file, ready when they answer
HTTP, stopped in reverse order (SIGTERM, then SIGKILL after a grace period).

::

    async with ProcessGroup() as group:
        model = await group.start(ProcessSpec("model", argv, log_path, ready_url=".../v1/models"))
        crashed = await group.wait_for_exit()   # the first child that exits on its own

Children run in their own session, so a terminal's Ctrl-C reaches only the parent, which
then stops them in order (the broker before the service it forwards to, and so on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from zgserve.common.errors import ZgError

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 25


class ProcessFailed(ZgError):
    """A child process exited, or did not become ready in time."""

    code = "process_failed"


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one child: its command, where its output goes, how to tell it is ready."""

    name: str
    argv: Sequence[str]
    log_path: Path
    ready_url: str | None = None  # GET answering 200 means ready; None: ready once started
    ready_timeout_s: float = 120.0
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class ChildProcess:
    """One running child; build it with :meth:`ProcessGroup.start`."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.started_at = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def spawn(self) -> None:
        """Start the process; its stdout and stderr go to the (truncated) log file."""
        spec = self.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        with spec.log_path.open("wb") as log:
            log.write(f"# {spec.name}: {' '.join(spec.argv)}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        logger.debug("%s started (pid %s)", spec.name, self.pid)

    async def wait_ready(self) -> None:
        """Poll ``ready_url`` until it answers 200; fail early if the process exits."""
        assert self._proc is not None
        url = self.spec.ready_url
        if url is None:
            return
        deadline = time.monotonic() + self.spec.ready_timeout_s
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise ProcessFailed(
                        f"{self.name} exited with status {self._proc.returncode} during start-up; "
                        f"last lines of {self.spec.log_path}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise ProcessFailed(
            f"{self.name} did not answer {url} within {self.spec.ready_timeout_s:.0f} s; "
            f"last lines of {self.spec.log_path}:\n{self.log_tail()}"
        )

    async def wait(self) -> int:
        """Wait until the process exits; its exit status."""
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it is still running after ``grace_s``; the exit status."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log file."""
        try:
            text = self.spec.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])


class ProcessGroup:
    """Children started in order and stopped in reverse order when the group closes."""

    def __init__(self, *, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s
        self.children: list[ChildProcess] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_all()

    async def start(self, spec: ProcessSpec) -> ChildProcess:
        """Start ``spec`` and wait until it is ready; on failure the child is stopped and it raises."""
        child = ChildProcess(spec)
        await child.spawn()
        self.children.append(child)
        try:
            await child.wait_ready()
        except BaseException:
            await child.stop(self.grace_s)
            raise
        return child

    async def wait_for_exit(self) -> ChildProcess:
        """Return the first child that exits while it was not being stopped."""
        waits = {asyncio.ensure_future(c.wait()): c for c in self.children}
        if not waits:
            await asyncio.Event().wait()  # nothing to watch: wait until cancelled
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for task in waits:
                task.cancel()

    async def stop_all(self) -> dict[str, int | None]:
        """Stop every child, the last started first; their exit statuses by name."""
        statuses: dict[str, int | None] = {}
        while self.children:
            child = self.children.pop()
            statuses[child.name] = await child.stop(self.grace_s)
        return statuses
