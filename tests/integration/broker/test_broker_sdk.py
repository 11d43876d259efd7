"""The official SDK (Node, unchanged) against a broker on the devnet: the whole user journey."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from zgserve.broker.db import repo
from zgserve.devnet.network import Devnet

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parents[3]
NODE_DIR = ROOT / "node"
SCRIPT = Path(__file__).parent / "sdk" / "journey.mjs"


async def run_node(script: Path, env: dict[str, str], limit_s: float = 120) -> dict[str, object]:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@0gfoundation").exists():
        pytest.skip("node and the official SDK are not installed (scripts/install.sh)")
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        cwd=NODE_DIR,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), limit_s)
    text = stdout.decode()
    assert proc.returncode == 0, f"node failed:\n{text[-3000:]}\n{stderr.decode()[-3000:]}"
    line = next(line for line in text.splitlines() if line.startswith("RESULT "))
    result: dict[str, object] = json.loads(line[len("RESULT ") :])
    return result


def journey_env(devnet: Devnet, user_key: str, provider: str, out_dir: Path) -> dict[str, str]:
    dep = devnet.deployment
    return {
        "RPC_URL": dep.rpc_url,
        "LEDGER": dep.contracts.ledger,
        "INFERENCE": dep.contracts.inference,
        "USER_KEY": user_key,
        "PROVIDER": provider,
        "OUT_DIR": str(out_dir),
    }


async def test_sdk_journey(start_broker, devnet: Devnet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with start_broker() as broker:
        user = await devnet.new_account()
        result = await run_node(
            SCRIPT, journey_env(devnet, user.private_key, broker.provider.address, tmp_path)
        )
        assert result["listed"] is True
        assert result["endpoint"] == broker.url + "/v1/proxy"
        for kind in ("plain", "stream"):
            call = result[kind]
            assert isinstance(call, dict)
            assert call["valid"] is True, f"{kind}: processResponse did not verify"
            assert call["resKey"] == call["bodyId"] == call["chatID"]
            assert call["authorization"].startswith("Bearer app-sk-")
        # A simulated TEE's /v1/quote binds no signer: the SDK must not take it for a verified one.
        assert result["signerMatch"] is False

        core = broker.core
        async with core.db.connect() as conn:
            page = await repo.list_requests(conn, user=user.address)
        assert page.total == 2
        expected = 0
        for kind in ("plain", "stream"):
            usage = result[kind]["usage"]  # type: ignore[index]
            expected += usage["prompt_tokens"] * core.service.input_price
            expected += usage["completion_tokens"] * core.service.output_price
        assert page.fee == expected
        # The SDK read /unsettledfee with its own token and got what the broker recorded.
        assert result["unsettledFee"] == str(expected)
        assert {r.response_id for r in page.items} == {result["plain"]["chatID"], result["stream"]["chatID"]}  # type: ignore[index]


async def test_sdk_journey_for_each_model_of_a_catalog(  # type: ignore[no-untyped-def]
    start_broker, devnet: Devnet, tmp_path: Path
) -> None:
    models = [
        {"id": "fake-model", "inputPrice": 3_000, "outputPrice": 5_000},
        {"id": "fake-mini", "inputPrice": 1_000, "outputPrice": 2_000, "upstreamModel": "fake-model"},
        {"id": "fake-tiered", "inputPrice": 4_000, "outputPrice": 4_000,
         "tieredPricing": [{"maxInputTokens": 2, "inputMultiplier": 1, "outputMultiplier": 1},
                           {"maxInputTokens": 0, "inputMultiplier": 3, "inputMultiplierDenominator": 2,
                            "outputMultiplier": 2}]},
    ]  # fmt: skip
    async with start_broker(models=models) as broker:
        user = await devnet.new_account()
        env = journey_env(devnet, user.private_key, broker.provider.address, tmp_path)
        result = await run_node(SCRIPT, env | {"MODELS": "fake-mini,fake-tiered"})
        calls = {"fake-model": result["plain"], **result["models"]}  # type: ignore[dict-item]
        assert all(call["valid"] is True for call in calls.values()), calls
        async with broker.core.db.connect() as conn:
            page = await repo.list_requests(conn, user=user.address)
        fee_by_id = {r.response_id: (r.model, r.fee) for r in page.items}
        for name, call in calls.items():
            usage = call["usage"]
            pricing = broker.core.catalog.resolve(name).pricing
            expected = pricing.fee(usage["prompt_tokens"], usage["completion_tokens"])
            assert fee_by_id[call["chatID"]] == (name, expected), name
        usage = calls["fake-tiered"]["usage"]
        assert usage["prompt_tokens"] > 2  # billed in the second tier: 6000 and 8000 per token
        assert (
            fee_by_id[calls["fake-tiered"]["chatID"]][1]
            == usage["prompt_tokens"] * 6_000 + usage["completion_tokens"] * 8_000
        )
