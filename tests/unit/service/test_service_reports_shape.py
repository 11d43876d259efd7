"""Report shapes the official verifiers read: top-level ``quote``, ``event_log``, ``vm_config``,
``tcb_info`` (as the TEE runtime gave them), and simulated reports no verifier can take for real.

The SDK's own code runs on these shapes in ``tests/integration/service/test_service_dstack_sdk.py``;
here the shapes alone, with a stand-in TEE backend answering as the dstack agent does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from zgserve.broker.quote import build_quote
from zgserve.common.signing import Signer
from zgserve.service.attestation import TeeBackend, TeeQuote
from zgserve.service.attestation.simulated import SIMULATED_REPORT_DATA, SimulatedTee
from zgserve.service.reports import ReportService

NONCE = bytes.fromhex("11" * 32)
TCB_INFO = json.dumps({"app_compose": '{"services":{}}', "event_log": []})  # a string, as the agent sends
EVENT_LOG = json.dumps([{"event": "compose-hash", "event_payload": "ab" * 32}])
VM_CONFIG = json.dumps({"cpu_count": 8, "memory_size": 1 << 34})


class StandInDstack(TeeBackend):
    """Answers as ``DstackTee`` does with a real agent: strings where the agent sends strings."""

    name = "dstack"
    is_hardware = True

    def __init__(self, quote: bytes = b"\x04\x00" + bytes(1000)) -> None:
        self._quote = quote

    async def signing_key(self, purpose: str) -> Signer:
        return Signer.generate()

    async def quote(self, report_data: bytes) -> TeeQuote:
        info: dict[str, Any] = {"app_id": "ab", "tcb_info": TCB_INFO, "tee": "dstack", "vm_config": VM_CONFIG}
        return TeeQuote(self.name, self._quote, report_data.ljust(64, b"\0"), EVENT_LOG, info)


async def test_stand_in_dstack_service_report_lifts_what_the_verifiers_read() -> None:
    signer = Signer.generate()
    report = await ReportService(StandInDstack(), None, signer.address).report(NONCE)
    assert report["tcb_info"] == TCB_INFO  # the agent's string, unparsed: the SDK parses strings
    assert report["vm_config"] == VM_CONFIG
    assert report["event_log"] == EVENT_LOG
    assert report["quote"] == report["intel_quote"]
    assert report["info"]["tcb_info"] == TCB_INFO
    assert report["all_attestations"][0]["tcb_info"] == TCB_INFO
    assert "simulated" not in report


async def test_stand_in_dstack_broker_quote_has_top_level_vm_config_and_the_bound_signer() -> None:
    tee = StandInDstack()
    signer = Signer.generate()
    quote = await build_quote(tee, signer)
    assert quote["simulated"] is False
    assert base64.b64decode(quote["report_data"]).rstrip(b"\0").decode() == signer.address
    assert quote["quote"] == (b"\x04\x00" + bytes(1000)).hex()
    assert quote["event_log"] == EVENT_LOG
    assert quote["vm_config"] == VM_CONFIG
    assert "vm_config" not in quote["info"]  # one copy, where dstack-verifier reads it
    assert quote["tcb_info"] == TCB_INFO
    assert "warning" not in quote


async def test_simulated_broker_quote_binds_no_signer_in_report_data() -> None:
    signer = Signer.generate()
    quote = await build_quote(SimulatedTee(), signer)
    decoded = base64.b64decode(quote["report_data"])
    assert decoded == SIMULATED_REPORT_DATA
    assert signer.address.encode() not in decoded
    assert signer.address[2:].lower().encode() not in decoded.lower()
    assert quote["signing_address"] == quote["provider_signer"] == signer.address
    assert quote["simulated"] is True
    assert quote["tee"] == "simulated"
    assert quote["quote"] == ""
    assert quote["event_log"] == ""
    assert "SIMULATED" in quote["warning"]
    for key in ("tcb_info", "vm_config"):
        assert key not in quote


async def test_stand_in_dstack_with_an_empty_quote_is_treated_as_simulated() -> None:
    """dstack without TDX answers an empty quote: nothing is bound, so nothing is claimed."""
    signer = Signer.generate()
    quote = await build_quote(StandInDstack(quote=b""), signer)
    assert quote["simulated"] is True
    assert base64.b64decode(quote["report_data"]) == SIMULATED_REPORT_DATA
    assert "tcb_info" not in quote
    report = await ReportService(StandInDstack(quote=b""), None, signer.address).report(NONCE)
    assert "quote" not in report
    assert "tcb_info" not in report
    assert report["simulated"] is True  # the service's report says so too


async def test_simulated_service_report_has_nothing_for_a_verifier_to_read() -> None:
    report = await ReportService(SimulatedTee(), None, Signer.generate().address).report(NONCE)
    for key in ("quote", "tcb_info", "vm_config"):
        assert key not in report
    assert report["intel_quote"] == ""
    assert report["event_log"] == ""
