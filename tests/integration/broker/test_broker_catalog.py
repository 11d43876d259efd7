"""A catalog of models behind one provider: the request's model picks prices, cap and upstream name."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from zgserve.broker.db import repo
from zgserve.common.pricing import Pricing, Tier

SMALL = {"id": "small", "inputPrice": 1_000, "outputPrice": 3_000, "aliases": ["s", "small-latest"]}
BIG = {
    "id": "big",
    "inputPrice": 7_000,
    "outputPrice": 11_000,
    "maxOutputTokens": 5,
    "upstreamModel": "fake-model",  # the backend's own name for it
    "tieredPricing": [
        {"maxInputTokens": 5, "inputMultiplier": 1, "outputMultiplier": 1},
        {
            "maxInputTokens": 100_000,
            "inputMultiplier": 3,
            "inputMultiplierDenominator": 2,
            "outputMultiplier": 2,
        },
    ],
}
CACHED = {"id": "cached", "inputPrice": 5_000, "outputPrice": 5_000, "cacheTokenBilling": {"divisor": 10}}


def chat(model: Any, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "one two three four five six"}]}
    if model is not None:
        body["model"] = model
    body["fake"] = {"as_asked": True, "chunks": 20, **fields.pop("fake", {})}
    return body | fields


async def post(s: aiohttp.ClientSession, url: str, auth: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with s.post(url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}) as r:
        return r.status, await r.json()


async def records(broker: Any, user: str) -> list[Any]:
    async with broker.core.db.connect() as conn:
        return list((await repo.list_requests(conn, user=user, order="asc")).items)


async def test_each_model_is_billed_at_its_own_prices(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with start_broker(models=[SMALL, BIG, CACHED]) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)

        status, small = await post(s, broker.url, auth, chat("s", max_tokens=4))  # by alias
        assert status == 200, small
        status, big = await post(s, broker.url, auth, chat("big", max_tokens=1000))
        assert status == 200, big
        # The model's own cap (5) wins over the request's 1000; the backend got its own name.
        assert big["usage"]["completion_tokens"] == 5
        assert big["model"] == "fake-model"
        status, cached = await post(
            s, broker.url, auth, chat("cached", max_tokens=3, fake={"cached_tokens": 6})
        )
        assert status == 200, cached

        rows = await records(broker, user.address)
        assert [r.model for r in rows] == ["small", "big", "cached"]
        u = small["usage"]
        assert rows[0].fee == u["prompt_tokens"] * 1_000 + u["completion_tokens"] * 3_000
        u = big["usage"]
        tiers = (Tier(5), Tier(100_000, 3, 2, 2, 1))
        expected = Pricing(7_000, 11_000, tiers).fee(u["prompt_tokens"], u["completion_tokens"])
        assert u["prompt_tokens"] > 5  # the second tier: input x 3/2, output x 2
        assert (
            rows[1].fee == expected == (u["prompt_tokens"] * 7_000 * 3 // 2 + u["completion_tokens"] * 22_000)
        )
        # The record shows the tier's prices, so a user's audit (fee <= tokens x prices) holds.
        assert (rows[1].input_price, rows[1].output_price) == (10_500, 22_000)
        u = cached["usage"]
        assert u["prompt_tokens_details"]["cached_tokens"] == 6
        uncached = u["prompt_tokens"] - 6
        assert rows[2].fee == uncached * 5_000 + 6 * 5_000 // 10 + u["completion_tokens"] * 5_000


async def test_unknown_model_is_refused_before_anything_is_reserved(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    async with start_broker(models=[SMALL, BIG]) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        for model in ("gpt-4", "", 7, None):
            status, body = await post(s, broker.url, auth, chat(model))
            assert status == 404, (model, body)
            assert body["error"]["code"] == "model_not_found"
            assert body["error"]["param"] == "model"
        assert await records(broker, user.address) == []
        assert await broker.core.guard.unsettled(user.address) == 0


async def test_a_wildcard_entry_serves_any_other_name(
    start_broker: StartBroker, funded_user: FundedUser
) -> None:
    wildcard = {"id": "*", "inputPrice": 2_000, "outputPrice": 4_000}
    async with start_broker(models=[SMALL, wildcard]) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        status, body = await post(s, broker.url, auth, chat("anything-else", max_tokens=2))
        assert status == 200, body
        (row,) = await records(broker, user.address)
        assert row.model == "anything-else"  # the name asked for, billed at the wildcard's prices
        u = body["usage"]
        assert row.fee == u["prompt_tokens"] * 2_000 + u["completion_tokens"] * 4_000
