"""``zgserve probe``: findings, a fresh report and the verifiers' verdicts, on this machine
(no TEE: simulated) and on a stand-in dstack agent replaying recorded real answers."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.fakes.dstack_agent import StandInDstackAgent
from zgserve.stack.probe import probe


async def test_probe_without_hardware_says_simulated_and_the_sdk_agrees() -> None:
    result = await probe(gpu="off")
    assert result.findings["auto_backend"] == "simulated"
    assert result.findings["tdx"]["usable"] is False
    assert result.findings["tdx"]["detail"]  # says why, not just "no"
    assert result.report is not None
    assert result.report["simulated"] is True
    assert result.ours is not None
    assert result.ours.failed
    assert result.sdk is not None, result.errors
    assert result.sdk["broker /v1/quote"]["signer"] != result.signer
    assert not any(verdict["compose"] for verdict in result.sdk.values())


async def test_probe_on_a_stand_in_dstack_agent_passes_the_sdk_checks() -> None:
    async with StandInDstackAgent() as agent:
        result = await probe(tee="auto", dstack_socket=agent.socket_path, gpu="off")
    assert result.findings["auto_backend"] == "dstack"
    assert result.findings["dstack_sockets"] == {str(agent.socket_path): True}
    assert result.report is not None
    assert "simulated" not in result.report
    assert result.sdk is not None, result.errors
    quote = result.sdk["broker /v1/quote"]
    assert quote["compose"] is True
    assert str(quote["signer"]).lower() == str(result.signer).lower()
    assert result.sdk["service report"]["compose"] is True


async def test_probe_command_prints_one_screen_and_json() -> None:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "zgserve"), "probe", "--gpu", "off", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    data = json.loads(out)
    assert data["findings"]["auto_backend"] == "simulated"
    assert data["report"]["simulated"] is True
    assert {c["name"] for c in data["our_verifier"]} >= {"TEE hardware evidence"}
