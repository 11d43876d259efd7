"""GPU evidence in CC and protected-PCIe (PPCIe) modes, against a stand-in for NVML.

The stand-in has the shape of nvidia-ml-py 12.550+: a ctypes settings structure that
``nvmlSystemGetConfComputeSettings`` fills through a pointer and a return code. In
PPCIe mode NVML reports ``multiGpuMode`` 1 with the CC feature off.
"""

from __future__ import annotations

import ctypes
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from zgserve.service.attestation import AttestationError
from zgserve.service.attestation.nvidia import NvmlGpuEvidence, detect, gpu_mode, probe

NONCE = bytes(range(32))


class Settings(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint)
        for name in ("version", "environment", "ccFeature", "devToolsMode", "multiGpuMode")
    ]


class ModalNvml:
    """NVML as nvidia-ml-py 12.550+ shows it; ``stale_reports`` answers carry another caller's nonce."""

    c_nvmlSystemConfComputeSettings_v1_t = Settings

    def __init__(self, cc: int, multi: int, gpus: int = 8, stale_reports: int = 0, status: int = 0) -> None:
        self.cc, self.multi, self.gpus, self.status = cc, multi, gpus, status
        self.stale_reports = stale_reports
        self.report_calls = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetConfComputeSettings(self, pointer: Any) -> int:
        pointer._obj.ccFeature, pointer._obj.multiGpuMode = self.cc, self.multi
        return self.status

    def nvmlSystemGetConfComputeState(self) -> Any:
        return SimpleNamespace(environment=2, ccFeature=self.cc, devToolsMode=0)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.133.20"

    def nvmlSystemGetConfComputeGpusReadyState(self) -> int:
        return 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetArchitecture(self, handle: int) -> int:
        return 9

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        self.report_calls += 1
        echoed = nonce
        if self.stale_reports:
            self.stale_reports -= 1
            echoed = bytes(32)  # a concurrent caller's request was answered
        report = list(bytes([0x11, 0xE0, 0x01, 0xFF]) + echoed + b"\x00" * 100)
        return SimpleNamespace(attestationReport=report, attestationReportSize=len(report))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
        return SimpleNamespace(attestationCertChain=list(chain), attestationCertChainSize=len(chain))


@pytest.mark.parametrize(("cc", "multi", "mode"), [(1, 0, "cc"), (0, 1, "ppcie"), (0, 0, "off")])
def test_mode_from_nvml_settings_stand_in(cc: int, multi: int, mode: str) -> None:
    assert gpu_mode(ModalNvml(cc, multi)) == mode


@pytest.mark.parametrize(("cc", "multi"), [(1, 0), (0, 1)])
async def test_cc_and_ppcie_hosts_give_evidence_for_every_gpu_stand_in(cc: int, multi: int) -> None:
    source = detect(ModalNvml(cc, multi))
    assert source is not None
    payload = await source.evidence(NONCE)
    assert payload["nonce"] == NONCE.hex()
    assert payload["arch"] == "HOPPER"
    assert len(payload["evidence_list"]) == 8


def test_mixed_or_unknown_modes_are_refused_stand_in(caplog: pytest.LogCaptureFixture) -> None:
    mixed = ModalNvml(cc=1, multi=1)
    with pytest.raises(AttestationError, match="both CC and protected-PCIe"):
        NvmlGpuEvidence(mixed).collect(NONCE)
    with caplog.at_level(logging.WARNING):
        assert detect(mixed) is None
    assert "both CC and protected-PCIe" in caplog.text  # auto mode says why there is no GPU evidence
    with pytest.raises(AttestationError, match="multi-GPU mode 2"):
        gpu_mode(ModalNvml(cc=1, multi=2))  # NVLink-encrypted (Blackwell): not supported here
    with pytest.raises(AttestationError, match="NVML error 3"):
        gpu_mode(ModalNvml(cc=1, multi=0, status=3))
    with pytest.raises(AttestationError, match="off"):
        NvmlGpuEvidence(ModalNvml(cc=0, multi=0)).collect(NONCE)
    assert probe(ModalNvml(cc=0, multi=1))["gpu_mode"] == "ppcie"
    assert probe(ModalNvml(cc=1, multi=1))["cc_enabled"] is False


def test_a_concurrent_callers_nonce_is_asked_again_stand_in() -> None:
    nvml = ModalNvml(cc=0, multi=1, gpus=2, stale_reports=2)
    payload = NvmlGpuEvidence(nvml).collect(NONCE)
    assert len(payload["evidence_list"]) == 2
    assert nvml.report_calls == 4  # GPU 0 was asked three times, GPU 1 once
    with pytest.raises(AttestationError, match="3 times"):
        NvmlGpuEvidence(ModalNvml(cc=1, multi=0, stale_reports=100)).collect(NONCE)
