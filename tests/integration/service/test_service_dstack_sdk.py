"""The official SDK's own dstack checks on our reports, built from a recorded real dstack agent.

The service runs against :class:`StandInDstackAgent`, which replays a real agent's recorded
``Info`` (``tcb_info`` a JSON string, as the agent sends it) and ``GetQuote``. The stand-in
writes the requested ``report_data`` into the recorded quote at the TDX report_data offset
(everything else recorded), so the binding is ours; the compose hash and event log are the
recording's. Then the SDK's ``processDStackVerification`` and ``extractTeeSignerAddress``
(``zgserve/stack/js/sdk_dstack_checks.mjs``) run in Node on the service's
``/v1/attestation/report`` and on the broker's ``/v1/quote`` (``build_quote``, the body
the broker serves), in dstack mode and in simulated mode.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.dstack_agent import QUOTE_REPORT_DATA, StandInDstackAgent, load_recording
from tests.fakes.openai_backend import FakeOpenAIBackend
from tests.integration.service.conftest import StartService
from zgserve.broker.quote import build_quote
from zgserve.broker.quote import report_data as broker_report_data
from zgserve.client.verify import verify_report_local
from zgserve.devnet.node import NodeToolsMissing
from zgserve.service.attestation import report_data_for
from zgserve.service.attestation.dstack import DstackTee
from zgserve.service.attestation.simulated import SimulatedTee
from zgserve.stack.sdk_checks import sdk_dstack_checks

pytestmark = pytest.mark.node

NONCE = bytes.fromhex("c0" * 32)
RECORDED_COMPOSE_HASH = load_recording()["SAMPLE_DSTACK_INFO"]["compose_hash"]


async def sdk_checks(reports: dict[str, Any]) -> dict[str, Any]:
    """The SDK's verdicts per report name: ``compose`` (bool), ``signer`` (str or None), ``log``."""
    try:
        return await sdk_dstack_checks(reports)
    except NodeToolsMissing as exc:
        pytest.skip(f"node and the official SDK are not installed (scripts/install.sh): {exc}")


@pytest.fixture
async def stand_in_agent() -> AsyncIterator[StandInDstackAgent]:
    async with StandInDstackAgent() as agent:
        yield agent


def _json_roundtrip(value: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(json.dumps(value))
    return parsed


async def test_stand_in_dstack_reports_pass_the_sdk_compose_and_signer_checks(
    stand_in_agent: StandInDstackAgent, start_service: StartService, fake_backend: FakeOpenAIBackend
) -> None:
    service = await start_service(
        target_url=fake_backend.url, tee="dstack", dstack_socket=stand_in_agent.socket_path
    )
    status, report = await service.get_json(f"/v1/attestation/report?nonce={NONCE.hex()}")
    assert status == 200, report
    # The agent's strings are passed on as strings, and lifted where the verifiers look.
    assert isinstance(report["info"]["tcb_info"], str)
    assert report["tcb_info"] == report["info"]["tcb_info"]
    assert report["quote"] == report["intel_quote"] != ""
    assert isinstance(report["event_log"], str)

    tee = DstackTee(stand_in_agent.socket_path)
    try:
        signer = await tee.signing_key("settlement")
        quote = _json_roundtrip(await build_quote(tee, signer))
    finally:
        await tee.close()
    assert quote["simulated"] is False
    assert "vm_config" not in quote["info"]
    assert quote["tcb_info"] == quote["info"]["tcb_info"]
    assert isinstance(quote["event_log"], str)
    assert quote["quote"]

    verdicts = await sdk_checks({"service": report, "broker": quote})
    for name in ("service", "broker"):
        verdict = verdicts[name]
        assert verdict["compose"] is True, verdict["log"]
        assert verdict["composeDetails"]["calculatedHash"] == RECORDED_COMPOSE_HASH
        assert "error:      Status: ❌ INVALID" not in verdict["log"]
    assert verdicts["broker"]["signer"].lower() == signer.address.lower()

    # The binding the stand-in wrote into the recorded quote is ours, in both reports.
    address = await service.signing_address()
    assert bytes.fromhex(report["quote"])[QUOTE_REPORT_DATA] == report_data_for(address, NONCE)
    assert bytes.fromhex(quote["quote"])[QUOTE_REPORT_DATA] == broker_report_data(signer.address)


async def test_stand_in_dstack_without_the_lifted_tcb_info_fails_the_sdk_compose_check(
    stand_in_agent: StandInDstackAgent, start_service: StartService, fake_backend: FakeOpenAIBackend
) -> None:
    """The bug of issue 14 item 1, kept reproducible: ``info.tcb_info`` alone is a string."""
    service = await start_service(
        target_url=fake_backend.url, tee="dstack", dstack_socket=stand_in_agent.socket_path
    )
    _, report = await service.get_json(f"/v1/attestation/report?nonce={NONCE.hex()}")
    del report["tcb_info"]
    verdict = (await sdk_checks({"service": report}))["service"]
    assert verdict["compose"] is False
    assert verdict["composeDetails"]["error"] == "app_compose not found in tcb_info"


async def test_simulated_reports_fail_the_sdk_signer_and_compose_checks(
    start_service: StartService, fake_backend: FakeOpenAIBackend
) -> None:
    service = await start_service(target_url=fake_backend.url, tee="simulated")
    _, report = await service.get_json(f"/v1/attestation/report?nonce={NONCE.hex()}")
    tee = SimulatedTee()
    signer = await tee.signing_key("settlement")
    quote = _json_roundtrip(await build_quote(tee, signer))
    assert quote["simulated"] is True
    assert quote["quote"] == ""
    assert quote["signing_address"] == signer.address

    verdicts = await sdk_checks({"service": report, "broker": quote})
    for name in ("service", "broker"):
        assert verdicts[name]["compose"] is False
        assert (verdicts[name]["signer"] or "").lower() != signer.address.lower()
    # The SDK prints what it decoded: the marker says why, where an address would be.
    assert "SIMULATED" in verdicts["broker"]["signer"]

    # Our verifier still names the mode rather than merely failing.
    ours = verify_report_local(report, NONCE)
    assert any("SIMULATED" in check.detail for check in ours.failed), ours.render()
