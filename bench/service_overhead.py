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
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import load, spawn_service  # noqa: E402


async def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zg-bench-"))
    fake, service, backend_url, service_url = await spawn_service(tmp)
    try:
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
                    f"{backend_url}/v1/chat/completions",
                    body,
                    stream=stream,
                    connections=connections,
                    seconds=seconds,
                )
                proxied = await load(
                    f"{service_url}/v1/chat/completions",
                    body,
                    stream=stream,
                    connections=connections,
                    seconds=seconds,
                    pids={"service": service.pid},
                )
                rows.append(
                    (
                        mode,
                        connections,
                        direct.rps,
                        proxied.rps,
                        (proxied.pct(0.5) - direct.pct(0.5)) * 1e3,
                        (proxied.pct(0.99) - direct.pct(0.99)) * 1e3,
                        proxied.cpu_us("service"),
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
