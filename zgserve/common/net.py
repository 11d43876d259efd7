"""Small networking helpers: free loopback ports and waiting for a server."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def wait_http(
    url: str,
    timeout: float = 30.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    expect_status: int | None = None,
) -> None:
    """Poll ``url`` until it answers (any status, or ``expect_status``) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if expect_status is None or resp.status == expect_status:
                        return
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                last = exc
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last})")
