"""A two-model catalog as the official SDK and its CLI (Node, unchanged) see it.

The broker registers the catalog on-chain (highest price, ``MultiModel``) and lists it
at ``/v1/models``; ``getProviderModels``, ``0g-compute-cli inference get-models`` and
``list-providers`` must show every model with its prices, tiers and cache billing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.broker.test_broker_sdk import NODE_DIR, run_node
from zgserve.devnet.network import Devnet

pytestmark = pytest.mark.node

SCRIPT = Path(__file__).parent / "sdk" / "catalog_listing.mjs"
CLI = NODE_DIR / "node_modules" / ".bin" / "0g-compute-cli"
SDK_INFERENCE_31337 = "0x0165878A594ca255338adfa4d48449f69242Eb8F"  # where the CLI looks on chain 31337
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOX = re.compile(r"[\u2500-\u257f]")  # cli-table3's borders

SMALL = {
    "id": "m-small",
    "inputPrice": 1_000_000_000,
    "outputPrice": 2_000_000_000,
    "aliases": ["small"],
    "contextLength": 8192,
    "tieredPricing": [
        {"maxInputTokens": 1000},
        {
            "maxInputTokens": 0,
            "inputMultiplier": 3,
            "inputMultiplierDenominator": 2,
            "outputMultiplier": 2,
        },
    ],
}
LARGE = {
    "id": "m-large",
    "inputPrice": 5_000_000_000,
    "outputPrice": 7_000_000_000,
    "maxOutputTokens": 256,
    "canonicalId": "large-1",
    "cacheTokenBilling": {"divisor": 4},
}
ANY = {"id": "*", "inputPrice": 3_000_000_000, "outputPrice": 4_000_000_000}


async def _cli(*args: str, limit_s: float = 60) -> str:
    if not CLI.exists():
        pytest.skip("the SDK's CLI is not installed (scripts/install.sh)")
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        *args,
        cwd=NODE_DIR,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    text = ANSI.sub("", out.decode())
    assert proc.returncode == 0, text[-3000:]
    return text


def _provider_block(listing: str, provider: str) -> str:
    """The rows of ``list-providers`` for one provider (up to the next provider's header)."""
    start = listing.lower().index(provider.lower())
    rest = listing[start:]
    nxt = re.search(r"Provider \d+", rest[len(provider) :])
    return rest if nxt is None else rest[: len(provider) + nxt.start()]


async def test_models_route_lists_the_catalog(start_broker) -> None:  # type: ignore[no-untyped-def]
    async with (
        start_broker(models=[SMALL, LARGE, ANY]) as broker,
        aiohttp.ClientSession() as s,
        s.get(broker.url + "/v1/models") as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    assert body["object"] == "list"
    small, large = body["data"]  # the wildcard is a billing catch-all, not a model to pick
    assert small["id"] == "m-small"
    assert large["id"] == "m-large"
    for m in (small, large):
        assert m["object"] == "model"
        assert m["owned_by"] == broker.provider.address
        assert m["type"] == "chatbot"
        assert "temperature" in m["supported_parameters"]
        assert m["verifiability"] == "TeeML"
        assert m["tee_attested"] is True  # start_broker acknowledges the signer
    assert "canonical_id" not in small
    assert large["canonical_id"] == "large-1"
    assert small["context_length"] == 8192
    assert small["max_completion_tokens"] == broker.core.settings.billing.max_output_tokens
    assert large["max_completion_tokens"] == 256
    assert small["pricing"] == {
        "prompt": "1000000000",
        "completion": "2000000000",
        "tiered_pricing": [
            {"max_input_tokens": 1000, "input_multiplier": 1, "output_multiplier": 1},
            {
                "max_input_tokens": 0,
                "input_multiplier": 3,
                "input_multiplier_denominator": 2,
                "output_multiplier": 2,
            },
        ],
    }
    assert large["pricing"] == {
        "prompt": "5000000000",
        "completion": "7000000000",
        "cache_token_billing": {"divisor": 4},
    }


async def test_sdk_and_cli_read_the_catalog(start_broker, private_devnet: Devnet) -> None:  # type: ignore[no-untyped-def]
    # A devnet of the test's own: `list-providers` shows the first 50 providers only, and the
    # session devnet holds more than that by the end of the suite.
    devnet = private_devnet
    dep = devnet.deployment
    if dep.contracts.inference.lower() != SDK_INFERENCE_31337.lower():
        pytest.skip("the CLI finds contracts by chain id; this devnet is not at the SDK's addresses")
    async with start_broker(models=[SMALL, LARGE, ANY], on=devnet) as broker:
        provider = broker.provider.address
        result = await run_node(SCRIPT, {"RPC_URL": dep.rpc_url, "PROVIDER": provider})
        get_models = await _cli("inference", "get-models", "--provider", provider, "--rpc", dep.rpc_url)
        listing = await _cli("inference", "list-providers", "--rpc", dep.rpc_url)

    # On-chain: the default model, the highest prices of the catalog (wildcard included), the flag.
    onchain = result["onchain"]
    assert isinstance(onchain, dict)
    assert onchain["model"] == "m-small"
    assert (onchain["inputPrice"], onchain["outputPrice"]) == ("5000000000", "7000000000")
    assert onchain["multi"] == {"multiModel": True, "priceDenomination": "NATIVE"}
    assert onchain["tiers"] is None  # per model, in /v1/models
    assert onchain["cache"] is None

    # getProviderModels: the catalog back, with what the SDK's own parsers make of its prices.
    assert result["multiModel"] is True
    assert result["defaultModel"] == "m-small"
    assert result["url"] == broker.url
    models = result["models"]
    assert isinstance(models, list)
    by_id = {m["id"]: m for m in models}
    assert set(by_id) == {"m-small", "m-large"}
    assert (by_id["m-small"]["prompt"], by_id["m-small"]["completion"]) == ("1000000000", "2000000000")
    assert (by_id["m-large"]["prompt"], by_id["m-large"]["completion"]) == ("5000000000", "7000000000")
    assert by_id["m-small"]["tiers"] == {
        "tiers": [
            {"maxInputTokens": 1000, "inputMultiplier": 1, "outputMultiplier": 1},
            {"maxInputTokens": 0, "inputMultiplier": 1.5, "outputMultiplier": 2},
        ]
    }
    assert by_id["m-small"]["cache"] is None
    assert by_id["m-large"]["cache"] == {"divisor": 4}
    assert by_id["m-large"]["tiers"] is None
    assert by_id["m-large"]["maxCompletionTokens"] == 256

    # get-models prints each model's prices in 0G per token, never N/A.
    assert "Multi-model:   yes (NATIVE)" in get_models
    assert "Default model: m-small" in get_models
    assert "N/A" not in get_models
    flat = " ".join(get_models.split())
    assert "m-small" in flat
    assert "m-large" in flat
    assert "in 0.000000001 / out 0.000000002 per token" in flat
    assert "in 0.000000005 / out 0.000000007 per token" in flat
    assert "cache-hit in: 0.00000000125" in flat
    assert "tiered by input tokens:" in flat
    assert ">1k: in 0.0000000015 / out 0.000000004" in flat

    # list-providers: the provider as multi-model, at its on-chain (highest) prices.
    block = " ".join(BOX.sub(" ", _provider_block(listing, provider)).split())
    assert "multi-model (NATIVE)" in block
    assert "0g-compute-cli inference get-models" in block
    assert "Input Price Per Token (0G) 0.000000005000000000" in block
    assert "Output Price Per Token (0G) 0.000000007000000000" in block


async def test_single_model_catalog_registers_its_pricing_modes(start_broker, devnet: Devnet) -> None:  # type: ignore[no-untyped-def]
    one = {**SMALL, "cacheTokenBilling": {"divisor": 10}}
    async with start_broker(models=[one]) as broker:
        result = await run_node(
            SCRIPT, {"RPC_URL": devnet.deployment.rpc_url, "PROVIDER": broker.provider.address}
        )
        async with aiohttp.ClientSession() as s, s.get(broker.url + "/v1/models") as resp:
            body = await resp.json()
    assert [m["id"] for m in body["data"]] == ["m-small"]
    onchain = result["onchain"]
    assert isinstance(onchain, dict)
    assert onchain["model"] == "m-small"
    assert (onchain["inputPrice"], onchain["outputPrice"]) == ("1000000000", "2000000000")
    assert onchain["multi"] == {"multiModel": False}
    assert onchain["tiers"] == {
        "tiers": [
            {"maxInputTokens": 1000, "inputMultiplier": 1, "outputMultiplier": 1},
            {"maxInputTokens": 0, "inputMultiplier": 1.5, "outputMultiplier": 2},
        ]
    }
    assert onchain["cache"] == {"divisor": 10}
    assert result["multiModel"] is False
    assert json.dumps(result["models"]).count("m-small") == 1
