"""A local anvil chain: started on a free loopback port, ready in about 0.1 s, stopped cleanly."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from zgserve.common.errors import ZgError
from zgserve.common.net import free_port
from zgserve.devnet.deployment import DevAccount
from zgserve.devnet.node import anvil_binary

logger = logging.getLogger(__name__)

ANVIL_CHAIN_ID = 31337
ANVIL_HOST = "127.0.0.1"


class AnvilError(ZgError):
    """anvil could not be started."""

    code = "anvil_failed"


class Anvil:
    """One anvil process. ``async with Anvil(accounts=10) as anvil: anvil.rpc_url``.

    The dev accounts come from anvil's default mnemonic (``anvil.accounts``, index 0 first),
    read from its ``--config-out`` file rather than derived here.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        accounts: int = 10,
        balance_og: int = 10_000,
        chain_id: int = ANVIL_CHAIN_ID,
        start_timeout: float = 15.0,
    ) -> None:
        self.requested_port = port
        self.port = 0
        self.n_accounts = accounts
        self.balance_og = balance_og
        self.chain_id = chain_id
        self.start_timeout = start_timeout
        self.accounts: list[DevAccount] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{ANVIL_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start anvil and wait until it answers JSON-RPC; a taken random port is retried."""
        attempts = 1 if self.requested_port else 3
        last: Exception | None = None
        for _ in range(attempts):
            try:
                await self._start_once(self.requested_port or free_port(ANVIL_HOST))
                return
            except AnvilError as exc:
                last = exc
                await self.stop()
        raise AnvilError(f"anvil did not start: {last}")

    async def _start_once(self, port: int) -> None:
        self.port = port
        self._workdir = Path(tempfile.mkdtemp(prefix="zg-anvil-"))
        config_out = self._workdir / "config.json"
        log = self._workdir / "anvil.log"
        args = [
            str(anvil_binary()),
            *("--host", ANVIL_HOST, "--port", str(port)),
            *("--chain-id", str(self.chain_id), "--accounts", str(self.n_accounts)),
            *("--balance", str(self.balance_og), "--config-out", str(config_out)),
            "--silent",
        ]
        started = time.monotonic()
        with log.open("wb") as log_fh:
            # Own session: a terminal's Ctrl-C reaches us, and we stop anvil in order.
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdout=log_fh, stderr=log_fh, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
            )
        await self._wait_ready(log)
        data = json.loads(config_out.read_text())
        self.accounts = [
            DevAccount(address=a, private_key=k)
            for a, k in zip(data["available_accounts"], data["private_keys"], strict=True)
        ]
        logger.info("anvil up at %s in %.2f s (pid %s)", self.rpc_url, time.monotonic() - started, self.pid)

    async def _wait_ready(self, log: Path) -> None:
        assert self._proc is not None
        assert self._workdir is not None
        config_out = self._workdir / "config.json"
        deadline = time.monotonic() + self.start_timeout
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-1500:]
                    raise AnvilError(f"anvil exited with {self._proc.returncode}: {tail.strip()}")
                if config_out.exists():
                    try:
                        async with session.post(self.rpc_url, json=body) as resp:
                            if resp.status == 200:
                                return
                    except (aiohttp.ClientError, TimeoutError, OSError):
                        pass
                await asyncio.sleep(0.02)
        raise AnvilError(f"anvil at {self.rpc_url} did not answer within {self.start_timeout:.0f} s")

    async def stop(self, grace: float = 3.0) -> None:
        """Terminate anvil (SIGTERM), kill it after ``grace`` seconds, remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            except ProcessLookupError:
                pass
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
