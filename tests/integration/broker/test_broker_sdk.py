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


async def test_sdk_journey(start_broker, devnet: Devnet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with start_broker() as broker:
        user = await devnet.new_account()
        dep = devnet.deployment
        result = await run_node(
            SCRIPT,
            {
                "RPC_URL": dep.rpc_url,
                "LEDGER": dep.contracts.ledger,
                "INFERENCE": dep.contracts.inference,
                "USER_KEY": user.private_key,
                "PROVIDER": broker.provider.address,
                "OUT_DIR": str(tmp_path),
            },
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
