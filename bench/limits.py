"""What the limits cost per request: the in-process store against Redis (127.0.0.1:6379).

One admission = ``Limiter.admit`` (requests per minute, tokens per minute, concurrency in all
and per user: every check on) + ``Limiter.end`` (the answer's tokens, the slots back), as every
charged request does. Printed: CPU (this process's utime + stime) and wall time per request, sequential and
with 32 concurrent requests, both stores in the same run.

    .venv/bin/python bench/limits.py [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import uuid
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zgserve.broker.limits import Limiter, LocalStore
from zgserve.broker.limits.redis_store import RedisStore
from zgserve.broker.settings import LimitsSettings

REDIS = "redis://127.0.0.1:6379/0"
SETTINGS = LimitsSettings.model_validate(
    {
        "perUserRPM": 10**9,
        "perUserBurst": 10**9,
        "perUserTPM": 10**12,
        "maxPerUserConcurrent": 1000,
        "maxGlobalConcurrent": 1000,
    }
)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(limiter: Limiter, n: int, concurrency: int) -> tuple[float, float]:
    async def one(i: int) -> None:
        user = f"0x{i % 50:040x}"
        admission = await limiter.admit(user)
        await limiter.end(admission, user, 20)

    started, cpu = time.perf_counter(), _cpu()
    for batch in range(n // concurrency):
        await asyncio.gather(*(one(batch * concurrency + k) for k in range(concurrency)))
    done = n // concurrency * concurrency
    return (_cpu() - cpu) / done * 1e6, (time.perf_counter() - started) / done * 1e6


async def main(n: int) -> None:
    local = Limiter(SETTINGS, LocalStore())
    shared = Limiter(SETTINGS, RedisStore(REDIS, slot_ttl=30, prefix=f"zgserve:bench:{uuid.uuid4().hex}:"))
    await shared.start()
    try:
        await _measure(shared, 200, 1)  # warm up: connections, script loading
        print(f"{'store':<12}{'conc':>6}{'CPU us/request':>18}{'wall us/request':>18}")
        for concurrency in (1, 32):
            for label, limiter in (("in-process", local), ("Redis", shared)):
                cpu, wall = await _measure(limiter, n, concurrency)
                print(f"{label:<12}{concurrency:>6}{cpu:>18.0f}{wall:>18.0f}")
    finally:
        await shared.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    uvloop.run(main(parser.parse_args().n))  # the broker runs on uvloop
