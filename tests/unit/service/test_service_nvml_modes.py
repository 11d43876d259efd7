"""GPU evidence in CC and protected-PCIe (PPCIe) modes, against a stand-in for NVML.

The stand-in has the shape of nvidia-ml-py 12.550+: a ctypes settings structure that
``nvmlSystemGetConfComputeSettings`` fills through a pointer and a return code. In
PPCIe mode NVML reports ``multiGpuMode`` 1 with the CC feature off.
"""

from __future__ import annotations

import logging

import pytest

from tests.fakes.nvml import StandInNvml
from zgserve.service.attestation import AttestationError
from zgserve.service.attestation.nvidia import NvmlGpuEvidence, detect, gpu_mode, probe

NONCE = bytes(range(32))


@pytest.mark.parametrize(("cc", "multi", "mode"), [(1, 0, "cc"), (0, 1, "ppcie"), (0, 0, "off")])
def test_mode_from_nvml_settings_stand_in(cc: int, multi: int, mode: str) -> None:
    assert gpu_mode(StandInNvml(cc, multi, gpus=8)) == mode


@pytest.mark.parametrize(("cc", "multi"), [(1, 0), (0, 1)])
async def test_cc_and_ppcie_hosts_give_evidence_for_every_gpu_stand_in(cc: int, multi: int) -> None:
    source = detect(StandInNvml(cc, multi, gpus=8))
    assert source is not None
    payload = await source.evidence(NONCE)
    assert payload["nonce"] == NONCE.hex()
    assert payload["arch"] == "HOPPER"
    assert len(payload["evidence_list"]) == 8


def test_mixed_or_unknown_modes_are_refused_stand_in(caplog: pytest.LogCaptureFixture) -> None:
    mixed = StandInNvml(1, 1, gpus=8)
    with pytest.raises(AttestationError, match="both CC and protected-PCIe"):
        NvmlGpuEvidence(mixed).collect(NONCE)
    with caplog.at_level(logging.WARNING):
        assert detect(mixed) is None
    assert "both CC and protected-PCIe" in caplog.text  # auto mode says why there is no GPU evidence
    with pytest.raises(AttestationError, match="multi-GPU mode 2"):
        gpu_mode(StandInNvml(1, 2, gpus=8))  # NVLink-encrypted (Blackwell): not supported here
    with pytest.raises(AttestationError, match="NVML error 3"):
        gpu_mode(StandInNvml(1, 0, gpus=8, status=3))
    with pytest.raises(AttestationError, match="off"):
        NvmlGpuEvidence(StandInNvml(0, 0, gpus=8)).collect(NONCE)
    assert probe(StandInNvml(0, 1, gpus=8))["gpu_mode"] == "ppcie"
    assert probe(StandInNvml(1, 1, gpus=8))["cc_enabled"] is False


def test_a_concurrent_callers_nonce_is_asked_again_stand_in() -> None:
    nvml = StandInNvml(0, 1, gpus=2, stale_reports=2)
    payload = NvmlGpuEvidence(nvml).collect(NONCE)
    assert len(payload["evidence_list"]) == 2
    assert nvml.report_calls == 4  # GPU 0 was asked three times, GPU 1 once
    with pytest.raises(AttestationError, match="3 times"):
        NvmlGpuEvidence(StandInNvml(1, 0, gpus=8, stale_reports=100)).collect(NONCE)
