"""What exact admission across replicas costs per request, against the in-process guard.

One admission = reserve + release, as every charged request does, for one user with
plenty of balance, on a throwaway PostgreSQL database (127.0.0.1:5432) with the
broker's schema. Printed: CPU (this process's utime + stime) and wall time per
admission, sequential and with 32 concurrent admissions, every guard in the same run: the
shared guard with budgets (one hold row for many requests of a user) and with a row per request.

    .venv/bin/python bench/shared_admission.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from typing import Any

import asyncpg
import uvloop

from zgserve.broker.billing import BalanceGuard
from zgserve.broker.db import create_engine, migrate
from zgserve.broker.shared_admission import SharedBalanceGuard
from zgserve.chain.types import Account

PG = os.environ.get("ZGSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
USER = "0x" + "ab" * 20


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _account() -> Account:
    return Account(
        user=USER,
        provider=USER,
        nonce=0,
        balance=10**30,
        pending_refund=0,
        refunds=(),
        additional_info="",
        acknowledged=True,
        valid_refunds_length=0,
        generation=0,
        revoked_bitmap=0,
    )


async def _measure(guard: Any, n: int, concurrency: int) -> tuple[float, float]:
    account = _account()

    async def one() -> None:
        hold = await guard.reserve(USER, account, 1)
        hold.release()

    started, cpu = time.perf_counter(), _cpu()
    for _ in range(n // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    done = n // concurrency * concurrency
    return (_cpu() - cpu) / done * 1e6, (time.perf_counter() - started) / done * 1e6


async def main(n: int) -> None:
    name = f"zgserve_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = PG.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name
    engine = create_engine(url, pool_size=32)
    try:
        await migrate(engine)

        async def fetch(user: str) -> Account:
            return _account()

        async def owed(user: str) -> tuple[int, int]:
            return 0, 0

        local = BalanceGuard(owed, refresh=3.0)
        shared = SharedBalanceGuard(engine, fetch, snapshot_ttl=3.0)
        single = SharedBalanceGuard(engine, fetch, snapshot_ttl=3.0, budget_requests=0)
        await shared.start()
        await single.start()
        print(f"{'guard':<24}{'conc':>6}{'CPU us/admission':>20}{'wall us/admission':>20}")
        for concurrency in (1, 32):
            guards = (("in-process (SQLite)", local), ("shared, budgets", shared), ("shared, rows", single))
            for label, guard in guards:
                cpu, wall = await _measure(guard, n, concurrency)
                print(f"{label:<24}{concurrency:>6}{cpu:>20.0f}{wall:>20.0f}")
        await shared.stop()
        await single.stop()
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(PG)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    uvloop.run(main(parser.parse_args().n))  # the broker runs on uvloop
