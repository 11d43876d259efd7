"""A real settlement process killed (SIGKILL) at the worst moments; a restart settles each fee once.

The processes are ``python -m zgserve.broker.settlement now`` (the ``zgserve settle now``
command) and the broker itself (``zgserve broker`` with its settlement loop), with the
engine's crash hook (``ZGSERVE_SETTLEMENT_CRASH_AT``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import pytest
import yaml

from tests.integration.settlement.conftest import ROOT, TEST_SETTLEMENT, MakeEnv, report_json
from zgserve.broker.db import repo
from zgserve.broker.settlement.engine import CRASH_ENV
from zgserve.common.money import OG
from zgserve.common.net import free_port, wait_http


@pytest.mark.parametrize("crash_at", ["before_send", "after_send", "after_receipt"])
async def test_killed_settler_restarts_and_settles_every_fee_exactly_once(
    make_env: MakeEnv, crash_at: str
) -> None:
    async with make_env() as env:
        users = [await env.user(OG) for _ in range(3)]
        for user in users:
            await env.record(user, 4)
        code, out = await env.settle_process("now", crash_at=crash_at)
        assert code == -signal.SIGKILL, out
        [(state, tx_hash, _)] = await env.batches()
        assert state == ("signed" if crash_at == "before_send" else "sent")
        mined = await env.chain.get_receipt(tx_hash)
        assert (mined is None) == (crash_at == "before_send")
        async with env.db.connect() as conn:
            assert await repo.total_unsettled(conn) > 0  # outcomes were never recorded

        code, out = await env.settle_process("now")
        assert code == 0, out
        report = report_json(out)
        assert report["transactions"] == []  # the journaled transaction was finished, not a new one
        assert {r["status"] for r in report["reconciled"]} == {"success"}
        assert len(report["reconciled"]) == 3
        await env.check_exactly_once()
        [(state, same_hash, gas_used)] = await env.batches()
        assert (state, same_hash) == ("done", tx_hash)
        assert gas_used


async def test_journaled_transaction_whose_nonce_was_taken_is_abandoned_and_redone(make_env: MakeEnv) -> None:
    """Killed before send; meanwhile the provider wallet sent something else with that nonce."""
    async with make_env() as env:
        user = await env.user(OG)
        await env.record(user, 2)
        code, out = await env.settle_process("now", crash_at="before_send")
        assert code == -signal.SIGKILL, out
        # E.g. the broker re-registering its service at start-up: the same sender nonce.
        inference = env.inference
        service = await inference.get_service(env.provider.address)
        await inference.add_or_update_service(replace(service.params(), input_price=service.input_price + 1))

        code, out = await env.settle_process("now")
        assert code == 0, out
        report = report_json(out)
        assert [r["status"] for r in report["reconciled"]] == ["abandoned"]
        assert [s["status"] for s in report["settlements"]] == ["success"]
        await env.check_exactly_once()
        assert [b[0] for b in await env.batches()] == ["abandoned", "done"]


async def test_killed_broker_process_restarts_and_settles_exactly_once(make_env: MakeEnv) -> None:
    """The broker itself (``zgserve broker``) with its settlement loop, killed after the receipt."""
    async with make_env() as env:
        users = [await env.user(OG) for _ in range(2)]
        for user in users:
            await env.record(user, 3)
        port = free_port()
        config = yaml.safe_load(env.config_file.read_text()) | {
            "servingUrl": f"http://127.0.0.1:{port}",
            "server": {"host": "127.0.0.1", "port": port},
            "registration": {"teeAddress": "0x" + "12" * 20},
            # failureCooldownSeconds 0: a round before the owner re-acknowledges is retried at once
            "settlement": {
                "enabled": True,
                "maxAgeSeconds": 1,
                "failureCooldownSeconds": 0,
                **TEST_SETTLEMENT,
            },
        }
        path = env.workdir / "broker-process.yaml"
        path.write_text(yaml.safe_dump(config))

        async def broker(crash_at: str | None) -> asyncio.subprocess.Process:
            environ = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
            if crash_at:
                environ[CRASH_ENV] = crash_at
            return await asyncio.create_subprocess_exec(
                str(ROOT / ".venv/bin/zgserve"),
                "broker",
                "-c",
                str(path),
                cwd=ROOT,
                env=environ,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )

        proc = await broker("after_receipt")
        await wait_http(f"http://127.0.0.1:{port}/health", timeout=30, expect_status=200)
        # Registration changed additionalInfo: the owner acknowledges the signer again.
        await env.chain.inference(env.owner).acknowledge_tee_signer_by_owner(env.provider.address)
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
        [(state, tx_hash, _)] = await env.batches()
        assert state == "sent"
        assert await env.chain.get_receipt(tx_hash) is not None  # mined, outcome never recorded

        proc = await broker(None)
        try:
            await wait_http(f"http://127.0.0.1:{port}/health", timeout=30, expect_status=200)
            deadline = asyncio.get_running_loop().time() + 30
            while (await env.batches())[0][0] != "done":
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down cleanly, then re-raises the signal it caught.
            assert await asyncio.wait_for(proc.wait(), 30) in (0, -signal.SIGTERM)
        await env.check_exactly_once()
        assert [b[1] for b in await env.batches()] == [tx_hash]
