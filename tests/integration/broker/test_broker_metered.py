"""Billing on the devnet: concurrency cannot overdraw; records equal usage × prices (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest

from tests.integration.broker.conftest import INPUT_PRICE, OUTPUT_PRICE, FundedUser, StartBroker, make_token
from zgserve.broker.db import repo
from zgserve.common.money import OG


async def chat(
    session: aiohttp.ClientSession, url: str, auth: str, *, stream: bool, chunks: int = 8, max_tokens: int = 8
) -> tuple[int, dict[str, Any] | None, str | None]:
    """One completion; returns (status, usage as the client received it, ZG-Res-Key)."""
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "count " * random.randint(1, 20)}],
        "max_tokens": max_tokens,
        "stream": stream,
        "fake": {"chunks": chunks},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with session.post(
        url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}
    ) as r:
        raw = await r.read()
        if r.status != 200:
            return r.status, json.loads(raw), None
        key = r.headers.get("ZG-Res-Key")
    if not stream:
        return 200, json.loads(raw)["usage"], key
    usage = None
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: {"):
            event = json.loads(block[6:])
            usage = event.get("usage") or usage
    return 200, usage, key


async def test_concurrent_requests_cannot_overdraw(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    # With these prices one request costs just under 0.1 0G and reserves about as much:
    # the 1 0G sub-account covers exactly 10 of them.
    output_price = 12 * 10**15
    async with start_broker(inputPrice=1, outputPrice=output_price) as broker:
        user = await funded_user(broker.provider.address, amount=1 * OG)
        auth = make_token(user.private_key, broker.provider.address)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as s:
            results = await asyncio.gather(
                *(chat(s, broker.url, auth, stream=i % 2 == 0) for i in range(100))
            )
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert all(r[0] == 402 and r[1]["error"]["code"] == "insufficient_balance" for r in refused)  # type: ignore[index]
        assert len(served) == 10
        async with broker.core.db.connect() as conn:
            recorded = await repo.unsettled_fee(conn, user.address)
        expected = sum(u["prompt_tokens"] * 1 + u["completion_tokens"] * output_price for _, u, _ in served)  # type: ignore[index]
        assert recorded == expected <= 1 * OG


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_recorded_fees_equal_usage_times_prices(
    start_broker: StartBroker, funded_user: FundedUser, pg_database: Any, db: str
) -> None:
    async with contextlib_for(db, pg_database) as url:
        overrides = {"database": {"url": url}} if url else {}
        async with start_broker(**overrides) as broker:
            users = [await funded_user(broker.provider.address) for _ in range(2)]
            tokens = [make_token(u.private_key, broker.provider.address) for u in users]
            async with aiohttp.ClientSession() as s:
                calls = [
                    chat(s, broker.url, tokens[i % 2], stream=i % 3 == 0, chunks=1 + i % 7, max_tokens=64)
                    for i in range(40)
                ]
                results = await asyncio.gather(*calls)
            assert all(status == 200 for status, _, _ in results)
            expected = sum(
                u["prompt_tokens"] * INPUT_PRICE + u["completion_tokens"] * OUTPUT_PRICE
                for _, u, _ in results
            )  # type: ignore[index]
            async with broker.core.db.connect() as conn:
                page = await repo.list_requests(conn, limit=1000)
                by_user = await repo.unsettled_by_user(conn)
            assert page.total == 40
            assert page.fee == expected
            assert sum(by_user.values()) == expected
            assert {r.response_id for r in page.items} == {key for _, _, key in results}
            assert all(
                r.fee == r.input_tokens * INPUT_PRICE + r.output_tokens * OUTPUT_PRICE for r in page.items
            )


def contextlib_for(db: str, pg_database: Any) -> Any:
    import contextlib

    if db == "postgres":
        return pg_database()

    @contextlib.asynccontextmanager
    async def none() -> Any:
        yield None

    return none()
