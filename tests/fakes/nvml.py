"""A stand-in for the slice of nvidia-ml-py (pynvml) that the GPU evidence source uses.

``legacy=True`` has the shape of nvidia-ml-py before 12.550 (no
``nvmlSystemGetConfComputeSettings``: CC mode only); otherwise the settings call fills
a ctypes structure through a pointer and returns a status, as the real binding does,
with ``multiGpuMode`` 1 for protected-PCIe. Calls that overlap are recorded
(``max_active``), and ``stale_reports`` answers (or all, with ``echo_nonce=False``)
carry another caller's nonce.
"""

from __future__ import annotations

import ctypes
import threading
import time
from types import SimpleNamespace
from typing import Any


class ConfComputeSettings(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint)
        for name in ("version", "environment", "ccFeature", "devToolsMode", "multiGpuMode")
    ]


class StandInNvml:
    """NVML for ``gpus`` Hopper GPUs in the mode given by ``cc`` and ``multi``."""

    def __init__(
        self,
        cc: int = 1,
        multi: int = 0,
        *,
        gpus: int = 2,
        echo_nonce: bool = True,
        stale_reports: int = 0,
        status: int = 0,
        legacy: bool = False,
    ) -> None:
        self.cc, self.multi, self.gpus, self.status = cc, multi, gpus, status
        self.echo_nonce = echo_nonce
        self.stale_reports = stale_reports
        self.report_calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        if not legacy:
            self.c_nvmlSystemConfComputeSettings_v1_t = ConfComputeSettings
            self.nvmlSystemGetConfComputeSettings = self._settings

    def nvmlInit(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def nvmlShutdown(self) -> None:
        with self._lock:
            self.active -= 1

    def _settings(self, pointer: Any) -> int:
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
        time.sleep(0.002)  # long enough for unserialised callers to overlap
        self.report_calls += 1
        echoed = nonce if self.echo_nonce else bytes(32)
        if self.stale_reports:
            self.stale_reports -= 1
            echoed = bytes(32)  # a concurrent caller's request was answered
        report = list(bytes([0x11, 0xE0, 0x01, 0xFF]) + echoed + b"\x00" * 100) + [0] * 64
        return SimpleNamespace(attestationReport=report, attestationReportSize=136)

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
        return SimpleNamespace(
            attestationCertChain=list(chain) + [0] * 8, attestationCertChainSize=len(chain)
        )
