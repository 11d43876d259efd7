"""Fees in integer neuron as the official broker charges them, checked by hand and by the SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from zgserve.common.pricing import Pricing, Tier, pricing_json

ROOT = Path(__file__).resolve().parents[3]
NODE_DIR = ROOT / "node"
SDK_SCRIPT = Path(__file__).parent / "sdk" / "pricing_checks.mjs"

# 1x up to 1000 prompt tokens, then input x3/2 and output x5/2 without bound.
LONG_CONTEXT = Pricing(3, 5, (Tier(1000), Tier(0, 3, 2, 5, 2)))


def test_flat_fee_is_tokens_times_prices() -> None:
    p = Pricing.flat(7, 11)
    assert p.tier_for(123) is None
    assert p.unit_prices(123) == (7, 11)
    assert p.fee(10, 3) == 10 * 7 + 3 * 11
    assert p.fee(0, 0) == 0
    # Without cache billing, cached tokens are ordinary prompt tokens.
    assert p.fee(10, 3, cached_tokens=10) == 10 * 7 + 3 * 11


def test_tier_boundary_is_inclusive() -> None:
    assert LONG_CONTEXT.tier_for(0) == Tier(1000)
    assert LONG_CONTEXT.tier_for(1000) == Tier(1000)
    assert LONG_CONTEXT.tier_for(1001) == Tier(0, 3, 2, 5, 2)
    assert LONG_CONTEXT.fee(1000, 2) == 1000 * 3 + 2 * 5
    # 3 * 3/2 = 4.5 and 5 * 5/2 = 12.5 per token, each rounded down before counting tokens.
    assert LONG_CONTEXT.unit_prices(1001) == (4, 12)
    assert LONG_CONTEXT.fee(1001, 2) == 1001 * 4 + 2 * 12


def test_fractional_multiplier_rounds_the_unit_price_not_the_total() -> None:
    p = Pricing(3, 10, (Tier(0, 3, 2, 3, 2),))
    assert p.unit_prices(10) == (4, 15)
    # 10 tokens x 4.5 would be 45; the broker bills 10 x floor(4.5) = 40.
    assert p.fee(10, 0) == 40
    assert p.fee(0, 10) == 150


def test_past_the_last_bounded_tier_the_last_tier_applies() -> None:
    p = Pricing(10, 10, (Tier(100), Tier(200, 2, 1, 3, 1)))
    assert p.tier_for(100) == Tier(100)
    assert p.tier_for(150) == Tier(200, 2, 1, 3, 1)
    assert p.tier_for(10**9) == Tier(200, 2, 1, 3, 1)
    assert p.fee(10**9, 1) == 10**9 * 20 + 30


def test_tiers_are_kept_in_matching_order_whatever_the_given_order() -> None:
    # A naive sort by bound puts the unbounded tier (0) first; billing must not change.
    p = Pricing(3, 5, (Tier(0, 3, 2, 5, 2), Tier(1000)))
    assert p.tiers == LONG_CONTEXT.tiers
    assert p.fee(500, 1) == LONG_CONTEXT.fee(500, 1) == 500 * 3 + 5
    p2 = Pricing(1, 1, (Tier(300, 3), Tier(100, 2), Tier(200, 4)))
    assert [t.max_input_tokens for t in p2.tiers] == [100, 200, 300]
    with pytest.raises(ValueError, match="same max_input_tokens"):
        Pricing(1, 1, (Tier(100), Tier(100, 2)))
    with pytest.raises(ValueError, match="same max_input_tokens"):
        Pricing(1, 1, (Tier(0), Tier(0, 2)))


def test_zero_multiplier_makes_that_side_free() -> None:
    p = Pricing(9, 4, (Tier(0, 0, 1, 1, 1),))
    assert p.unit_prices(50) == (0, 4)
    assert p.fee(50, 3) == 12
    p_out = Pricing(9, 4, (Tier(10), Tier(0, 1, 1, 0, 1)))
    assert p_out.fee(11, 1000) == 11 * 9


def test_cached_tokens_cost_the_tiered_input_price_over_the_divisor() -> None:
    p = Pricing(3, 5, LONG_CONTEXT.tiers, cache_divisor=4)
    # Tier 2 is chosen on all 11 prompt tokens, cached ones included: 4 and 12 neuron per token.
    # 8 uncached x 4 + floor(3 x 4 / 4) + 2 x 12.
    assert p.fee(1011, 2, cached_tokens=3) == 1008 * 4 + 3 + 24
    # The cached part is rounded down once for all cached tokens, not per token.
    q = Pricing(7, 0, cache_divisor=2)
    assert q.fee(3, 0, cached_tokens=3) == 10  # 21 / 2 = 10.5, not 3 x floor(3.5) = 9
    assert q.fee(5, 0, cached_tokens=3) == 2 * 7 + 10
    # Divisor 1: cached tokens at full price.
    assert Pricing(7, 1, cache_divisor=1).fee(5, 2, cached_tokens=5) == 37


def test_cached_tokens_beyond_the_prompt_are_clamped() -> None:
    p = Pricing(8, 1, cache_divisor=4)
    assert p.fee(10, 1, cached_tokens=25) == p.fee(10, 1, cached_tokens=10) == 10 * 8 // 4 + 1
    assert p.fee(0, 1, cached_tokens=5) == 1


def test_huge_values_stay_exact() -> None:
    price = 3 * 10**30 + 1
    p = Pricing(price, price, (Tier(10), Tier(0, 3, 2, 7, 3)), cache_divisor=3)
    unit_in, unit_out = p.unit_prices(10**15)
    assert unit_in == 45 * 10**29 + 1  # (9e30 + 3) // 2, a float would drop the trailing 1
    assert unit_out == 7 * 10**30 + 2  # (21e30 + 7) // 3
    fee = p.fee(10**15, 10**12, cached_tokens=10**14)
    expected = (9 * 10**14) * unit_in + (10**14 * unit_in) // 3 + 10**12 * unit_out
    assert type(fee) is int
    assert fee == expected
    assert fee % 10 != 0  # the low digits survive
    assert p.max_fee(10**15, 10**12) == 10**15 * unit_in + 10**12 * unit_out


def test_inputs_are_bounded() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        Pricing.flat(1, 1).fee(-1, 0)
    with pytest.raises(ValueError, match="cached_tokens"):
        Pricing.flat(1, 1).fee(1, 0, cached_tokens=-1)
    with pytest.raises(TypeError):
        Pricing.flat(1, 1).fee(1.0, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Pricing.flat(1.5, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Pricing.flat(1, 1).fee(True, 0)
    with pytest.raises(ValueError, match="cache divisor"):
        Pricing(1, 1, cache_divisor=0)
    with pytest.raises(ValueError, match="denominators"):
        Tier(10, 1, 0)
    with pytest.raises(ValueError, match="max_input_tokens"):
        Tier(-1)


PROPERTY_CASES = [
    Pricing.flat(3, 5),
    Pricing(3, 5, (Tier(4), Tier(0, 3, 2, 5, 2)), cache_divisor=3),
    # A later tier cheaper than an earlier one: the top of the earlier tier is the maximum.
    Pricing(10, 10, (Tier(5, 4, 1, 2, 1), Tier(12, 1, 2, 1, 3), Tier(20, 3, 1))),
    Pricing(7, 2, (Tier(3, 0, 1, 1, 1), Tier(8, 10, 3, 0, 1)), cache_divisor=2),
]


@pytest.mark.parametrize("pricing", PROPERTY_CASES)
def test_max_fee_bounds_every_fee_below_it_and_is_reached(pricing: Pricing) -> None:
    for prompt_bound in range(25):
        for completion_bound in range(3):
            reserved = pricing.max_fee(prompt_bound, completion_bound)
            fees = [
                pricing.fee(p, c, cached)
                for p in range(prompt_bound + 1)
                for c in range(completion_bound + 1)
                for cached in {0, p // 2, p, p + 3}
            ]
            assert max(fees) == reserved, (prompt_bound, completion_bound)


def test_pricing_json_is_the_sdk_model_info_shape() -> None:
    assert pricing_json(Pricing.flat(10**18, 2 * 10**18)) == {
        "prompt": "1000000000000000000",
        "completion": "2000000000000000000",
    }
    p = Pricing(3, 5, (Tier(0, 3, 2, 5, 2), Tier(1000, 2, 1, 1, 1)), cache_divisor=10)
    assert pricing_json(p) == {
        "prompt": "3",
        "completion": "5",
        "tiered_pricing": [
            {"max_input_tokens": 1000, "input_multiplier": 2, "output_multiplier": 1},
            {
                "max_input_tokens": 0,
                "input_multiplier": 3,
                "output_multiplier": 5,
                "input_multiplier_denominator": 2,
                "output_multiplier_denominator": 2,
            },
        ],
        "cache_token_billing": {"divisor": 10},
    }
    json.dumps(pricing_json(p))  # plain JSON, no custom types


# ---- the SDK's own code, in Node --------------------------------------------------------------

SDK_PRICINGS = [
    Pricing.flat(7, 11),
    LONG_CONTEXT,
    Pricing(3, 5, LONG_CONTEXT.tiers, cache_divisor=4),
    Pricing(10**12 + 1, 3 * 10**12 + 7, (Tier(100, 1, 1, 1, 1), Tier(200, 10, 3, 7, 4), Tier(300, 2))),
    Pricing(9, 4, (Tier(0, 0, 1, 1, 1),), cache_divisor=3),
]
# (prompt, completion, cached): tier edges, cached beyond the prompt, nothing at all.
SDK_USAGES = [
    (0, 0, 0),
    (1, 1, 0),
    (100, 7, 0),
    (101, 7, 0),
    (1000, 3, 0),
    (1001, 3, 0),
    (250, 2, 0),
    (350, 9, 0),
    (1011, 2, 3),
    (5, 1, 9),
    (40, 0, 40),
]


def _run_sdk(cases: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@0gfoundation").is_dir():
        pytest.skip("node and the official SDK are not installed (node/node_modules)")
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    proc = subprocess.run(
        ["node", str(SDK_SCRIPT), str(path)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"node failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result: list[dict[str, Any]] = json.loads(line[len("RESULT ") :])
    return result


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


@pytest.mark.node
def test_fee_matches_the_sdk_calculation(tmp_path: Path) -> None:
    rows = [(p, u) for p in SDK_PRICINGS for u in SDK_USAGES]
    cases = [
        {
            "pricing": pricing_json(p),
            "usage": _usage(*u),
            "unitPrices": [str(x) for x in p.unit_prices(u[0])],
        }
        for p, u in rows
    ]
    results = _run_sdk(cases, tmp_path)
    assert len(results) == len(rows)
    for (p, (prompt, completion, cached)), r in zip(rows, results, strict=True):
        ours = p.fee(prompt, completion, cached)
        sdk_at_unit = int(r["feeAtUnitPrices"])
        if p.cache_divisor is None or cached == 0:
            # The SDK's calculateFee (tokens x per-token price, BigInt) at the tier's per-token
            # prices is exactly what the broker charges.
            assert sdk_at_unit == ours, (p, prompt, completion, cached)
        else:
            # The SDK bills cached tokens at full price: its estimate exceeds the charge by
            # exactly the cache discount.
            unit_in = p.unit_prices(prompt)[0]
            hit = min(cached, prompt)
            assert sdk_at_unit - ours == hit * unit_in - hit * unit_in // p.cache_divisor >= 0
        if not p.tiers and p.cache_divisor is None:
            assert int(r["feeAtBase"]) == ours


@pytest.mark.node
def test_sdk_parses_pricing_json_back(tmp_path: Path) -> None:
    cases = [
        {"pricing": pricing_json(p), "usage": _usage(0, 0, 0), "unitPrices": ["0", "0"]} for p in SDK_PRICINGS
    ]
    results = _run_sdk(cases, tmp_path)
    for p, r in zip(SDK_PRICINGS, results, strict=True):
        if p.tiers:
            # The SDK folds each fraction into one JS number; Python's true division rounds the
            # same IEEE way, so the comparison is exact.
            assert r["tiers"] == {
                "tiers": [
                    {
                        "maxInputTokens": t.max_input_tokens,
                        "inputMultiplier": t.input_multiplier / t.input_denominator,
                        "outputMultiplier": t.output_multiplier / t.output_denominator,
                    }
                    for t in p.tiers
                ]
            }
        else:
            assert r["tiers"] is None
        assert r["cache"] == ({"divisor": p.cache_divisor} if p.cache_divisor is not None else None)
