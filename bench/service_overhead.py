"""What the verifiable service costs on top of its backend.

The fake OpenAI backend (tests/fakes) and the service run as separate processes;
the same load goes to the backend directly and through the service, for
non-streamed answers and 20-chunk streams (the backend writing the whole stream
at once, or one write per event as a model does), with 1 and 32 connections. Printed:
requests/s through the service relative to direct, the latency it adds (p50,
p99), and the service process's CPU time per request, read from /proc/<pid>/stat
before and after each run (signing and storing included; robust on a noisy
machine, unlike wall-clock figures).

    .venv/bin/python bench/service_overhead.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zgserve.common.net import free_port, wait_http  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Run:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, body: bytes, stream: bool, connections: int, seconds: float) -> Run:
    latencies: list[float] = []
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                if stream:
                    async for _ in resp.content.iter_any():
                        pass
                else:
                    await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url} answered {resp.status}")
            latencies.append(time.perf_counter() - t0)

        for _ in range(20):  # warm up connections and caches
            await one()
        latencies.clear()
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one()

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return Run(len(latencies), elapsed, latencies)


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def main(seconds: float) -> None:
    fake_port, service_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="zg-bench-")
    fake = start([sys.executable, "-m", "tests.fakes.openai_backend", "--port", str(fake_port)])
    service = start(
        [
            str(Path(sys.executable).parent / "zgserve"),
            "service",
            "--port",
            str(service_port),
            "--tee",
            "simulated",
            "--target-url",
            f"http://127.0.0.1:{fake_port}",
            "--store-path",
            f"{tmp}/signatures.sqlite3",
        ],
        env={"ZG_SERVICE_GPU_EVIDENCE": "off"},
    )
    try:
        await wait_http(f"http://127.0.0.1:{fake_port}/v1/models", 30, 200)
        await wait_http(f"http://127.0.0.1:{service_port}/health", 60, 200)
        rows = []
        modes = [
            ("non-streamed", False, {"chunks": 20}),
            # The 20 events in one backend write (what a fast backend's socket buffer often holds) ...
            ("stream, 1 write", True, {"chunks": 20}),
            # ... and one write per event, as a model generating tokens one by one sends them.
            ("stream, 20 writes", True, {"chunks": 20, "separate_writes": True}),
        ]
        for mode, stream, behaviour in modes:
            body = json.dumps(
                {
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": "Tell me about signed answers, briefly."}],
                    "stream": stream,
                    "fake": behaviour,
                }
            ).encode()
            for connections in (1, 32):
                direct = await load(
                    f"http://127.0.0.1:{fake_port}/v1/chat/completions", body, stream, connections, seconds
                )
                cpu0 = cpu_seconds(service.pid)
                proxied = await load(
                    f"http://127.0.0.1:{service_port}/v1/chat/completions", body, stream, connections, seconds
                )
                cpu = cpu_seconds(service.pid) - cpu0
                warm_requests = proxied.requests + 20  # the warm-up requests also cost CPU
                rows.append(
                    (
                        mode,
                        connections,
                        direct.rps,
                        proxied.rps,
                        (proxied.pct(0.5) - direct.pct(0.5)) * 1e3,
                        (proxied.pct(0.99) - direct.pct(0.99)) * 1e3,
                        cpu / warm_requests * 1e6,
                    )
                )
        print()
        print(
            f"{'mode':<18}{'conns':>6}{'direct r/s':>12}{'service r/s':>13}{'ratio':>7}"
            f"{'+p50 ms':>9}{'+p99 ms':>9}{'CPU us/req':>12}"
        )
        for mode, conns, d_rps, p_rps, p50, p99, cpu_us in rows:
            print(
                f"{mode:<18}{conns:>6}{d_rps:>12.0f}{p_rps:>13.0f}{p_rps / d_rps:>7.2f}"
                f"{p50:>9.2f}{p99:>9.2f}{cpu_us:>12.0f}"
            )
        print("\nCPU us/req: service process utime+stime per request (signing and storing included).")
        print(
            "Targets: <= 300 us non-streamed, <= 500 us per 20-chunk stream, < 1 ms added p50 (1 connection)."
        )
    finally:
        for proc in (service, fake):
            proc.terminate()
        for proc in (service, fake):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measured run")
    args = parser.parse_args()
    uvloop.run(main(args.seconds))
