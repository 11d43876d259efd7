"""The official SDK's whole journey against zgserve, then settlement and the refund, to the neuron.

fake OpenAI backend -> verifiable service (simulated TEE) -> broker (production wiring:
registered on-chain, settlement engine), on a devnet of the test's own (the chain clock
moves). The official SDK (Node, unchanged) funds a ledger, lists the provider, verifies
it (``verifyService`` on ``/v1/quote``), acknowledges, chats streamed and not, verifies
both answers (``processResponse``) and requests a refund. Then the broker settles
(``POST /v1/settle``): the provider's on-chain earnings equal the fees the broker
recorded, the user's refundable balance is what it moved to the provider minus those
fees, and after the lock time the SDK's ``retrieveFund`` returns exactly the deposit
minus the fees to the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.stack import INPUT_PRICE, OUTPUT_PRICE, Provider, provider_stack
from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet

pytestmark = [pytest.mark.node, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "node"
SCRIPT = Path(__file__).parent / "sdk" / "journey.mjs"
DEPOSIT_OG = 5


@contextlib.asynccontextmanager
async def provider_on(devnet: Devnet, tmp_path: Path) -> AsyncIterator[Provider]:
    """Fake backend, verifiable service and broker for a fresh, owner-acknowledged provider."""
    async with (
        FakeOpenAIBackend() as fake,
        provider_stack(devnet, tmp_path, target_url=fake.url, model="fake-model") as provider,
    ):
        yield provider


async def run_sdk(env: dict[str, str]) -> dict[str, Any]:
    """Run the journey script with the repository's Node tools (2 minutes at most); its RESULT."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(SCRIPT),
        cwd=NODE_DIR,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = stdout.decode()
    assert proc.returncode == 0, f"node failed:\n{text[-3000:]}\n{stderr.decode()[-3000:]}"
    line = next(line for line in text.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


@pytest.fixture
def sdk_installed() -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@0gfoundation").is_dir():
        pytest.skip("node and the official SDK are not installed (scripts/install.sh)")


async def recorded_requests(http: aiohttp.ClientSession, broker_url: str, user: str) -> dict[str, Any]:
    async with http.get(broker_url + "/v1/request", params={"user": user.lower()}) as resp:
        assert resp.status == 200, await resp.text()
        page: dict[str, Any] = await resp.json()
        return page


@pytest.mark.usefixtures("sdk_installed")
async def test_official_sdk_journey_settles_and_refunds(private_devnet: Devnet, tmp_path: Path) -> None:
    devnet = private_devnet
    chain = devnet.chain
    dep = devnet.deployment
    async with provider_on(devnet, tmp_path) as provider, aiohttp.ClientSession() as http:
        user = await devnet.new_account()
        sdk_env = {
            "RPC_URL": dep.rpc_url,
            "LEDGER": dep.contracts.ledger,
            "INFERENCE": dep.contracts.inference,
            "USER_KEY": user.private_key,
            "PROVIDER": provider.address,
            "OUT_DIR": str(tmp_path),
            "DEPOSIT_OG": str(DEPOSIT_OG),
        }
        sdk = await run_sdk(sdk_env | {"PHASE": "journey"})

        # Discovery and verifyService: a simulated TEE binds no signer in /v1/quote and has no
        # event log, so neither the SDK's signer check nor its compose check passes.
        assert sdk["listed"] is True
        assert sdk["endpoint"] == provider.broker_url + "/v1/proxy"
        verify = sdk["verifyService"]
        service = await chain.inference().get_service(provider.address)
        assert verify["success"] is True
        assert verify["targetSeparated"] is True
        assert verify["reportsGenerated"] == ["broker", "llm"]
        assert verify["signerAllMatch"] is False
        assert service.tee_signer_address.lower() not in [
            str(r["address"]).lower() for r in verify["signerReports"]
        ]
        assert verify["composePassed"] is False
        assert verify["brokerReportTee"] == "simulated"
        assert (tmp_path / "broker_attestation_report.json").is_file()
        assert (tmp_path / "llm_attestation_report.json").is_file()

        # Both answers verify with the SDK's own check; the chat id resolves both ways.
        assert sdk["accountAfterAcknowledge"]["acknowledged"] is True
        for kind in ("plain", "stream"):
            answer = sdk[kind]
            assert answer["valid"] is True, f"{kind}: processResponse did not verify"
            assert answer["resKey"] == answer["bodyId"] == answer["chatID"]
            assert answer["content"]

        # The broker recorded exactly the SDK-visible usage at the on-chain prices.
        page = await recorded_requests(http, provider.broker_url, user.address)
        assert page["metadata"]["total"] == 2
        fees = int(page["fee"])
        usages = [sdk[kind]["usage"] for kind in ("plain", "stream")]
        expected = sum(
            u["prompt_tokens"] * INPUT_PRICE + u["completion_tokens"] * OUTPUT_PRICE for u in usages
        )
        assert fees == expected > 0
        chat_ids = {sdk["plain"]["chatID"], sdk["stream"]["chatID"]}
        assert {item["responseId"] for item in page["items"]} == chat_ids

        # retrieveFund turned the whole sub-account into a pending refund.
        transferred = int(sdk["accountBeforeRefund"]["balance"])
        assert transferred >= 2 * OG  # the SDK's auto-funding before each request
        assert sdk["accountAfterRefund"] == {
            "balance": str(transferred),
            "pendingRefund": str(transferred),
            "acknowledged": True,
        }

        # Our engine settles: the provider earns on-chain exactly the recorded fees.
        earned_before = await chain.balance(provider.address)
        async with http.post(provider.broker_url + "/v1/settle", json={}) as resp:
            report = await resp.json()
            assert resp.status == 200, report
        assert [s["status"] for s in report["settlements"]] == ["success"], report
        assert int(report["settled"]) == fees
        gas = 0
        for tx in report["transactions"]:
            receipt = await chain.get_receipt(tx)
            assert receipt is not None
            gas += receipt.fee
        assert await chain.balance(provider.address) - earned_before + gas == fees
        settled = await recorded_requests(http, provider.broker_url, user.address)
        assert all(item["settled"] for item in settled["items"])

        # What the user can get back: what it moved to the provider minus the fees, to the neuron.
        account = await chain.inference().get_account(user.address, provider.address)
        assert account.balance == transferred - fees
        assert account.pending_refund == transferred - fees
        ledger = await chain.ledger().get_ledger(user.address)
        deposit = DEPOSIT_OG * OG
        assert ledger.total_balance == deposit - fees
        assert ledger.available_balance == deposit - transferred

        # After the lock time the SDK's retrieveFund returns it all: deposit minus fees.
        await devnet.increase_time((dep.lock_time or 3600) + 5)
        collected = await run_sdk(sdk_env | {"PHASE": "collect"})
        assert collected["account"] == {"balance": "0", "pendingRefund": "0", "acknowledged": True}
        assert collected["ledger"] == {
            "availableBalance": str(deposit - fees),
            "totalBalance": str(deposit - fees),
        }
