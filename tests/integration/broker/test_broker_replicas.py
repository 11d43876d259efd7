"""Broker replicas on one PostgreSQL: a settlement by one reaches every other one's caches,
and a real nginx (deploy/nginx.conf) balances chats over them."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.integration.broker.conftest import (
    FundedUser,
    RunningBroker,
    StartBroker,
    make_token,
    throwaway_database,
)
from tests.integration.broker.processes import nginx_in_front
from zgserve.broker.app import BrokerDeps
from zgserve.broker.db import repo
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.wiring import settlement_factory
from zgserve.common.money import OG

pytestmark = pytest.mark.postgres

NGINX_CONF = Path(__file__).resolve().parents[3] / "deploy" / "nginx.conf"
# Caches that never expire on their own here: only an invalidation makes a replica re-read.
NO_EXPIRY = {"accountCacheSeconds": 3600}


def _settling_deps() -> BrokerDeps:
    cfg = SettlementConfig.model_validate({"enabled": False, "leaseSeconds": 1.0})
    return BrokerDeps(settlement_factory=lambda core: settlement_factory(core, config=cfg))


@contextlib.asynccontextmanager
async def two_replicas(
    start_broker: StartBroker, tmp_path: Path, **overrides: Any
) -> AsyncIterator[list[RunningBroker]]:
    """Two brokers of one provider (key, settlement key) on one throwaway PostgreSQL database."""
    async with throwaway_database() as url:
        shared = {"database": {"url": url}, "tee": {"keyFile": str(tmp_path / "tee.json")}, "auth": NO_EXPIRY}
        shared |= overrides
        async with (
            start_broker(deps=_settling_deps(), **shared) as first,
            start_broker(
                deps=_settling_deps(),
                acknowledge=False,
                privateKeys=[first.provider.private_key],
                registration={"enabled": False},  # the first replica registered the service
                **shared,
            ) as second,
        ):
            yield [first, second]


async def chat(s: aiohttp.ClientSession, url: str, auth: str) -> dict[str, Any]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with s.post(url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def _eventually(check: Any, limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time limit"
        await asyncio.sleep(0.05)


async def _drop_listeners(db_url: str) -> None:
    """Kill every broker's LISTEN connection (what a database restart does) and await new ones."""
    conn = await asyncpg.connect(make_url(db_url).set(drivername="postgresql").render_as_string(False))
    try:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        before = {r[0] for r in await conn.fetch(sql)}
        assert len(before) == 2  # one per replica
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(before)
        )

        async def relistening() -> bool:
            now = {r[0] for r in await conn.fetch(sql)}
            return len(now) == 2 and not now & before

        await _eventually(relistening, limit_s=10.0)
    finally:
        await conn.close()


@pytest.mark.parametrize("listener_dropped", [False, True], ids=["steady", "after-reconnect"])
async def test_a_settlement_by_one_replica_invalidates_the_others_caches(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path, listener_dropped: bool
) -> None:
    async with two_replicas(start_broker, tmp_path) as (a, b), aiohttp.ClientSession() as s:
        if listener_dropped:
            await _drop_listeners(str(a.core.db.url.render_as_string(hide_password=False)))
        provider = a.provider.address
        user = await funded_user(provider, amount=OG)
        key = user.address.lower()
        auth = make_token(user.private_key, provider)
        for _ in range(3):
            await chat(s, b.url, auth)  # served (and cached) by B

        async def recorded() -> bool:
            async with b.core.db.connect() as conn:
                return await repo.unsettled_fee(conn, key) > 0

        await _eventually(recorded)
        fee = await b.core.guard.unsettled(key)
        assert fee > 0
        assert (await b.core.accounts.get(key)).account.balance == OG

        async with s.post(a.url + "/v1/settle", json={}) as r:  # A settles
            assert r.status == 200, await r.text()
            assert [e["status"] for e in (await r.json())["settlements"]] == ["success"]

        async def b_reread() -> bool:
            # B's guard and account cache re-read the database and the chain, told by A's NOTIFY.
            return await b.core.guard.unsettled(key) == 0

        await _eventually(b_reread)
        assert (await b.core.accounts.get(key)).account.balance == OG - fee


async def test_nginx_in_front_of_two_replicas_serves_through_both(
    start_broker: StartBroker, funded_user: FundedUser, tmp_path: Path
) -> None:
    async with two_replicas(start_broker, tmp_path) as replicas, aiohttp.ClientSession() as s:
        upstreams = [r.url.removeprefix("http://") for r in replicas]
        async with nginx_in_front(upstreams, tmp_path) as lb:
            provider = replicas[0].provider.address
            user = await funded_user(provider, amount=OG)
            auth = make_token(user.private_key, provider)
            for _ in range(6):
                assert (await chat(s, lb, auth))["choices"][0]["message"]["content"]
            streamed = []
            body = {
                "model": "fake-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                "stream": True,
            }
            async with s.post(
                lb + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}
            ) as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    streamed.append(chunk)
            assert b"data: [DONE]" in b"".join(streamed)
        log = (tmp_path / "access.log").read_text()
        served_by = set(re.findall(r'"POST /v1/proxy/chat/completions[^"]*" 200 \d+ upstream=(\S+)', log))
        assert served_by == set(upstreams), log
