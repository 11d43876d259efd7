"""Attestation reports: the shared contract, the binding, and simulated mode marked everywhere."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from zgserve.common.signing import Signer
from zgserve.service.attestation import GpuEvidenceSource
from zgserve.service.attestation.simulated import SimulatedTee
from zgserve.service.protocol import AttestationReport, NvidiaPayload
from zgserve.service.reports import ReportService

NONCE = bytes.fromhex("5a" * 32)


class StaticGpu(GpuEvidenceSource):
    name = "static"
    is_hardware = True

    async def evidence(self, nonce: bytes) -> dict[str, Any]:
        return {
            "nonce": nonce.hex(),
            "evidence_list": [{"certificate": "Y2VydA==", "evidence": "ZXY="}],
            "arch": "HOPPER",
        }


async def test_simulated_report_is_marked_in_every_evidence_field() -> None:
    signer = Signer.generate()
    report = await ReportService(SimulatedTee(), None, signer.address).report(NONCE)
    AttestationReport.model_validate(report)
    assert report["signing_address"] == signer.address
    assert report["signing_algo"] == "ecdsa"
    assert report["request_nonce"] == NONCE.hex()
    assert report["tee"] == "simulated"
    assert report["simulated"] is True
    assert "SIMULATED" in report["warning"]
    assert report["intel_quote"] == ""
    assert report["event_log"] == ""
    assert report["info"]["simulated"] is True
    payload = json.loads(report["nvidia_payload"])
    NvidiaPayload.model_validate(payload)
    assert payload["simulated"] is True
    assert payload["evidence_list"] == []
    assert payload["available"] is False
    assert "certificate" not in report["nvidia_payload"]
    assert report["report_data"] == bytes.fromhex(signer.address[2:]).ljust(32, b"\0").hex() + NONCE.hex()
    assert report["all_attestations"][0]["signing_address"] == signer.address
    assert "all_attestations" not in report["all_attestations"][0]


async def test_fake_gpu_evidence_is_requested_with_the_same_nonce() -> None:
    service = ReportService(SimulatedTee(), StaticGpu(), Signer.generate().address)
    payload = json.loads((await service.report(NONCE))["nvidia_payload"])
    assert payload["nonce"] == NONCE.hex()
    assert payload["evidence_list"][0]["evidence"] == "ZXY="


async def test_nonce_less_report_is_cached_and_refreshed() -> None:
    service = ReportService(SimulatedTee(), None, Signer.generate().address, refresh_s=0.05)
    await service.start()
    try:
        first = await service.report()
        assert (await service.report())["request_nonce"] == first["request_nonce"]

        await asyncio.sleep(0.2)
        assert (await service.report())["request_nonce"] != first["request_nonce"]
    finally:
        await service.stop()
