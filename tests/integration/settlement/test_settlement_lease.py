"""Several settlers on one database: one holds the lease; even without it, no fee is settled twice."""

from __future__ import annotations

import asyncio
import signal

import pytest
from sqlalchemy import select

from tests.integration.settlement.conftest import MakeEnv
from zgserve.broker.settlement.lease import Lease
from zgserve.broker.settlement.models import BatchRow
from zgserve.common.money import OG


async def test_one_settler_at_a_time_and_a_clean_handover(make_env: MakeEnv) -> None:
    async with make_env() as env:
        user = await env.user(OG)
        await env.record(user, 2)
        first, second = env.engine(), env.engine()
        assert first.lease.holder != second.lease.holder
        assert (await first.run_round()).leader
        assert not (await second.run_round()).leader
        report = await second.settle()
        assert report["leader"] is False
        assert report["settlements"] == []
        await first.stop()  # releases the lease at once
        report = await second.settle()
        assert report["leader"] is True
        assert [s["status"] for s in report["settlements"]] == ["success"]
        await env.check_exactly_once()


@pytest.mark.postgres
async def test_claims_keep_fees_single_even_with_the_lease_defeated(make_env: MakeEnv) -> None:
    """Two engines that each believe they hold the lease race on the same users (PostgreSQL)."""
    async with make_env(db="postgres") as env:
        users = [await env.user(OG) for _ in range(6)]
        a, b = env.engine(), env.engine()
        b.lease = b.closer.lease = Lease(env.db, "another-name", ttl=30)  # no longer separates them

        async def traffic() -> None:
            for _ in range(6):
                for user in users:
                    await env.record(user, 1)
                await asyncio.sleep(0.05)

        async def settle_repeatedly(engine_: object) -> None:
            for _ in range(12):
                await engine_.settle()  # type: ignore[attr-defined]

        await asyncio.gather(traffic(), settle_repeatedly(a), settle_repeatedly(b))
        await a.settle()
        await env.check_exactly_once()


async def _running(proc: asyncio.subprocess.Process) -> str:
    """The output of a ``run`` process up to the line saying its loop runs."""
    assert proc.stdout is not None
    seen: list[str] = []
    while not seen or "settlement loop running" not in seen[-1]:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, "".join(seen)
        seen.append(line.decode(errors="replace"))
    return "".join(seen)


@pytest.mark.postgres
async def test_two_settler_processes_on_postgres_settle_each_fee_once(make_env: MakeEnv) -> None:
    async with make_env(db="postgres") as env:
        users = [await env.user(OG) for _ in range(5)]
        procs = [await env.spawn("run", "-o", "maxAgeSeconds=1") for _ in range(2)]
        started: list[str] = []
        try:
            # SIGTERM before a process installed its handler would kill it (-15): wait for both.
            started = [await _running(p) for p in procs]
            for _ in range(5):
                for user in users:
                    await env.record(user, 1)
                await asyncio.sleep(0.4)

            async def done() -> bool:
                from zgserve.broker.db import repo

                async with env.db.connect() as conn:
                    return await repo.total_unsettled(conn) == 0

            deadline = asyncio.get_running_loop().time() + 30
            while not await done():
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.2)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            outputs = [(await p.communicate())[0].decode(errors="replace") for p in procs]
            outputs = [head + tail for head, tail in zip([*started, "", ""], outputs, strict=False)]
        assert [p.returncode for p in procs] == [0, 0], outputs
        await env.check_exactly_once()
        async with env.db.connect() as conn:
            states = {r[0] for r in await conn.execute(select(BatchRow.state))}
        assert states == {"done"}
