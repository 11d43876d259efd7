"""The fee store comes back: a restarted or stopped database costs 503s, never 500s, never free answers.

PostgreSQL runs as a private instance (:mod:`tests.pg_instance`) so that it can be
restarted without touching the shared cluster. SQLite's outage is a write lock held
by another process (a backup tool, a forgotten ``sqlite3`` shell): reads go on, fee
records cannot be written.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from tests.integration.broker.conftest import FundedUser, RunningBroker, StartBroker, make_token
from tests.pg_instance import PrivatePostgres, private_postgres


@dataclass
class Answer:
    status: int
    code: str | None  # the error code of a refusal
    key: str | None  # ZG-Res-Key of a delivered answer
    content: bool  # any generated text reached the client


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


async def chat(session: aiohttp.ClientSession, url: str, auth: str, *, stream: bool) -> Answer:
    body: dict[str, Any] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "count to four"}],
        "max_tokens": 8,
        "stream": stream,
    }
    async with session.post(
        url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}
    ) as r:
        raw = await r.read()
        if r.status != 200:
            return Answer(r.status, json.loads(raw)["error"]["code"], None, False)
        key = r.headers.get("ZG-Res-Key")
    if not stream:
        return Answer(200, None, key, bool(json.loads(raw)["choices"][0]["message"]["content"]))
    text_ = raw.decode()
    content = '"content":' in text_
    if "data: [DONE]" not in text_ or '"error"' in text_:
        # A stream that ended in an error event delivered content without a (committed) record.
        return Answer(200, "stream_error", None, content)
    return Answer(200, None, key, content)


async def ready(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url + "/ready") as r:
        return r.status, await r.json()


async def wait_ready(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        status, body = await ready(session, url)
        if status == 200:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/ready stayed {status}: {body}")
        await asyncio.sleep(0.2)


async def stored_keys(broker: RunningBroker, user: str) -> list[str | None]:
    async with broker.core.db.connect() as conn:
        rows = await conn.execute(
            text('SELECT response_id FROM broker_requests WHERE "user" = :u'), {"u": user.lower()}
        )
        return [row[0] for row in rows]


def assert_refused(answers: list[Answer]) -> None:
    for a in answers:
        assert a.status == 503, a  # never 500, never an answer the store did not take
        assert a.code in ("storage_unavailable", "record_failed"), a
        assert not a.content, a


async def test_postgres_restart_and_outage(
    private_pg: PrivatePostgres, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    # Writes under way wait out a restart (a second or so) rather than fail.
    overrides = {"database": {"url": private_pg.url, "retrySeconds": 5}}
    async with start_broker(**overrides) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        delivered: list[Answer] = [
            await chat(s, broker.url, auth, stream=False),
            await chat(s, broker.url, auth, stream=True),
        ]
        assert [a.status for a in delivered] == [200, 200], delivered
        status, body = await ready(s, broker.url)
        assert status == 200, body
        assert set(body["checks"]) == {"database", "chain", "service"}

        # A restart while idle: every pooled and dedicated connection is dead, nobody knows yet.
        await asyncio.to_thread(private_pg.restart)
        after = await asyncio.gather(*(chat(s, broker.url, auth, stream=i % 2 == 0) for i in range(4)))
        assert [a.status for a in after] == [200] * 4, after
        delivered += after

        # A restart while requests are under way: they wait for the database (retrySeconds)
        # or are refused, none is answered without its record.
        during = asyncio.gather(*(chat(s, broker.url, auth, stream=i % 2 == 0) for i in range(4)))
        await asyncio.to_thread(private_pg.restart)
        for a in await during:
            if a.status == 200 and a.code is None:
                delivered.append(a)
            else:
                assert_refused([a])

        # An outage: refused with 503 before anything is generated, /ready says why.
        await asyncio.to_thread(private_pg.stop)
        refused = [await chat(s, broker.url, auth, stream=False)]
        status, body = await ready(s, broker.url)
        assert status == 503, body
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["chain"]["ok"]
        assert body["checks"]["service"]["ok"]
        refused += [await chat(s, broker.url, auth, stream=stream) for stream in (True, False, True)]
        assert_refused(refused)
        assert [a.code for a in refused[1:]] == ["storage_unavailable"] * 3
        async with s.get(broker.url + "/health") as r:
            assert r.status == 200  # alive all along: nothing to restart

        # Back: served again without restarting the broker.
        await asyncio.to_thread(private_pg.start)
        await wait_ready(s, broker.url)
        back = [await chat(s, broker.url, auth, stream=stream) for stream in (False, True, False)]
        assert [a.status for a in back] == [200] * 3, back
        delivered += back

        # Exactly one fee record per delivered answer, and none for the refused ones.
        keys = await stored_keys(broker, user.address)
        assert all(a.key for a in delivered)
        assert sorted(keys) == sorted(a.key for a in delivered)  # type: ignore[type-var]


async def test_sqlite_write_lock_held_elsewhere(start_broker: StartBroker, funded_user: FundedUser) -> None:
    async with start_broker(database={"retrySeconds": 0.5}) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        delivered = [await chat(s, broker.url, auth, stream=False)]
        assert delivered[0].status == 200, delivered
        path = broker.core.db.url.database
        assert path is not None
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            # The first write waits out the busy timeout, then the store is known to be down.
            refused = [await chat(s, broker.url, auth, stream=False)]
            status, body = await ready(s, broker.url)
            assert status == 503, body
            assert body["checks"]["database"]["ok"] is False
            refused += [await chat(s, broker.url, auth, stream=stream) for stream in (True, False)]
            assert_refused(refused)
            assert [a.code for a in refused[1:]] == ["storage_unavailable"] * 2
        finally:
            other.execute("ROLLBACK")
            other.close()
        await wait_ready(s, broker.url)
        back = [await chat(s, broker.url, auth, stream=stream) for stream in (True, False)]
        assert [a.status for a in back] == [200] * 2, back
        delivered += back
        keys = await stored_keys(broker, user.address)
        assert sorted(keys) == sorted(a.key for a in delivered)  # type: ignore[type-var]
