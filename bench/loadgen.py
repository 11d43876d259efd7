"""The load generator and CPU meter shared by the benchmarks.

``load`` sends the same request from ``connections`` concurrent clients for a fixed
time (after a warm-up) and returns the latencies; ``pids`` names processes whose
utime + stime (from /proc/<pid>/stat) is measured over the same run, which stays
meaningful on a noisy machine where wall-clock figures do not.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = 20


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Run:
    requests: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def cpu_us(self, name: str) -> float:
        """CPU per request of one measured process (the warm-up requests cost CPU too)."""
        return self.cpu.get(name, 0.0) / (self.requests + WARMUP) * 1e6


async def load(
    url: str,
    body: bytes,
    *,
    stream: bool,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    pids: dict[str, int] | None = None,
) -> Run:
    """POST ``body`` to ``url`` from ``connections`` clients for ``seconds``."""
    pids = pids or {}
    latencies: list[float] = []
    request_headers = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=connections)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=request_headers) as resp:
                if stream:
                    async for _ in resp.content.iter_any():
                        pass
                else:
                    await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url} answered {resp.status}: {await resp.text()}")
            latencies.append(time.perf_counter() - t0)

        for _ in range(WARMUP):  # warm up connections and caches
            await one()
        latencies.clear()
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one()

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    return Run(len(latencies), elapsed, latencies, cpu)


def spawn(
    cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start one process of the benchmark from the repository root."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  # closed with the process
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out)


async def spawn_service(tmp: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str, str]:
    """The fake OpenAI backend and the verifiable service (simulated TEE) in front of it, started
    and answering: (backend process, service process, backend URL, service URL)."""
    import sys

    from zgserve.common.net import free_port, wait_http

    fake_port, service_port = free_port(), free_port()
    zgserve = str(Path(sys.executable).parent / "zgserve")
    fake = spawn([sys.executable, "-m", "tests.fakes.openai_backend", "--port", str(fake_port)])
    service = spawn(
        [
            zgserve,
            "service",
            "--port",
            str(service_port),
            "--tee",
            "simulated",
            "--target-url",
            f"http://127.0.0.1:{fake_port}",
            "--store-path",
            str(tmp / "sig.sqlite3"),
        ],
        env={"ZG_SERVICE_GPU_EVIDENCE": "off", "ZG_SERVICE_ALLOWED_PARAMS": '["fake"]'},
    )
    await wait_http(f"http://127.0.0.1:{fake_port}/v1/models", 30, 200)
    await wait_http(f"http://127.0.0.1:{service_port}/health", 60, 200)
    return fake, service, f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{service_port}"
