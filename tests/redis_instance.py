"""A private Redis server for tests that kill and restart it (the shared one at 6379 serves the rest)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator

from zgserve.common.net import free_port


class PrivateRedis:
    """``redis-server`` on a free loopback port, without persistence: ``start``, ``kill``."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                pong = await reader.readline()
                writer.close()
                if pong.startswith(b"+PONG"):
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    async def kill(self) -> None:
        """SIGKILL: every key is gone (no persistence), every connection broken."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(binary, free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
