"""NVIDIA GPU evidence through NVML (H100/H200 in CC or protected-PCIe mode).

NVIDIA supports two multi-GPU setups: every GPU in confidential-computing (CC) mode,
or every GPU in protected-PCIe (PPCIe) mode, which 8-GPU HGX machines use. NVML
reports both in ``nvmlSystemGetConfComputeSettings`` (driver R550, nvidia-ml-py
12.550 and later): CC mode is ``ccFeature`` on, PPCIe mode is ``multiGpuMode`` 1
with ``ccFeature`` off. Both at once is no mode NVIDIA supports and is refused.

For each GPU: the SPDM attestation report for a 32-byte nonce
(``nvmlDeviceGetConfComputeGpuAttestationReport``) and the device certificate
chain (``nvmlDeviceGetConfComputeGpuCertificate``), returned as the
``nvidia_payload`` object that NVIDIA's remote attestation service (NRAS) takes.
The report is an SPDM GET_MEASUREMENTS exchange that starts ``11 E0 01 FF``
followed by the nonce: both are checked before the evidence is returned.

NVML is process-global state and concurrent callers get each other's nonces, so
every NVML sequence runs under one lock, in a worker thread.

``nvidia-ml-py`` is optional (``pip install zgserve[gpu]``). Run this module
alone to see what the host offers::

    python -m zgserve.service.attestation.nvidia
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import json
import logging
import secrets
import sys
import threading
from types import ModuleType
from typing import Any, Literal

from zgserve.service.attestation.base import NONCE_SIZE, AttestationError, GpuEvidenceSource

SPDM_MEASUREMENTS_PREFIX = bytes([0x11, 0xE0, 0x01, 0xFF])
ARCH_NAMES = {9: "HOPPER", 10: "BLACKWELL"}
CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
MULTIGPU_NONE = 0  # NVML_CC_SYSTEM_MULTIGPU_NONE
MULTIGPU_PROTECTED_PCIE = 1  # NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE
NVML_SUCCESS = 0

GpuMode = Literal["cc", "ppcie", "off"]

_NVML_LOCK = threading.Lock()
logger = logging.getLogger(__name__)


def load_nvml() -> ModuleType | None:
    """The ``pynvml`` module (from nvidia-ml-py), or None when it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def check_evidence_nonce(evidence: bytes, nonce: bytes) -> None:
    """Raise AttestationError unless ``evidence`` is a GET_MEASUREMENTS exchange for ``nonce``."""
    if evidence[:4] != SPDM_MEASUREMENTS_PREFIX:
        raise AttestationError(f"GPU evidence does not start with 11 E0 01 FF (got {evidence[:4].hex(' ')})")
    if evidence[4 : 4 + NONCE_SIZE] != nonce:
        raise AttestationError("GPU evidence carries another nonce than the one requested")


def _legacy_cc_mode(nvml: Any) -> GpuMode:
    """CC only, from the R535 call: drivers before R550 have no PPCIe and no settings call."""
    return "cc" if nvml.nvmlSystemGetConfComputeState().ccFeature == CC_FEATURE_ENABLED else "off"


def gpu_mode(nvml: Any) -> GpuMode:
    """``cc``, ``ppcie`` or ``off`` for this host (NVML initialised); raises AttestationError if mixed."""
    settings_type = getattr(nvml, "c_nvmlSystemConfComputeSettings_v1_t", None)
    query = getattr(nvml, "nvmlSystemGetConfComputeSettings", None)
    if settings_type is None or query is None:
        return _legacy_cc_mode(nvml)
    settings = settings_type()
    try:
        status = query(ctypes.byref(settings))
    except Exception as exc:
        # An older driver lacks the symbol (NVMLError_FunctionNotFound): it can only do CC.
        if "Function Not Found" in str(exc) or type(exc).__name__.endswith("FunctionNotFound"):
            return _legacy_cc_mode(nvml)
        raise
    if status != NVML_SUCCESS:
        raise AttestationError(f"nvmlSystemGetConfComputeSettings failed (NVML error {status})")
    cc = settings.ccFeature == CC_FEATURE_ENABLED
    ppcie = settings.multiGpuMode == MULTIGPU_PROTECTED_PCIE
    if cc and ppcie:
        raise AttestationError("GPUs report both CC and protected-PCIe mode; NVIDIA supports only one")
    if settings.multiGpuMode not in (MULTIGPU_NONE, MULTIGPU_PROTECTED_PCIE):
        raise AttestationError(f"unsupported NVML multi-GPU mode {settings.multiGpuMode}")
    return "ppcie" if ppcie else "cc" if cc else "off"


# Another process on the host (nvidia-smi, a second verifier) can ask the same GPU for a
# report between our request and our read, and we then read its nonce: ask again, a few times.
REPORT_ATTEMPTS = 3


def _report_for_nonce(nvml: Any, handle: Any, index: int, nonce: bytes) -> bytes:
    """GPU ``index``'s SPDM report for ``nonce``, asked again when another caller's nonce came back."""
    for attempt in range(1, REPORT_ATTEMPTS + 1):
        report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
        evidence = bytes(report.attestationReport[: report.attestationReportSize])
        if evidence[:4] == SPDM_MEASUREMENTS_PREFIX and evidence[4 : 4 + NONCE_SIZE] != nonce:
            logger.warning(
                "GPU %d returned another caller's nonce (attempt %d); asking again", index, attempt
            )
            continue
        check_evidence_nonce(evidence, nonce)
        return evidence
    raise AttestationError(
        f"GPU {index} evidence carries another nonce than the one requested, {REPORT_ATTEMPTS} times"
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlGpuEvidence(GpuEvidenceSource):
    """GPU evidence from NVML; ``nvml`` is the pynvml module (injectable for tests)."""

    name = "nvml"
    is_hardware = True

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    async def evidence(self, nonce: bytes) -> dict[str, Any]:
        return await asyncio.to_thread(self.collect, nonce)

    def collect(self, nonce: bytes) -> dict[str, Any]:
        """The ``nvidia_payload`` object for ``nonce`` (blocking; serialised process-wide)."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError("the GPU nonce is exactly 32 bytes")
        nvml = self.nvml
        with _NVML_LOCK:
            try:
                nvml.nvmlInit()
            except Exception as exc:
                raise AttestationError(f"NVML unavailable: {exc}") from exc
            try:
                if gpu_mode(nvml) == "off":
                    raise AttestationError("GPU confidential computing (CC or protected PCIe) is off here")
                evidence_list: list[dict[str, str]] = []
                arches: set[str] = set()
                for index in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    arch = ARCH_NAMES.get(nvml.nvmlDeviceGetArchitecture(handle))
                    if arch is None:
                        raise AttestationError(f"GPU {index} has no confidential-computing attestation")
                    arches.add(arch)
                    evidence = _report_for_nonce(nvml, handle, index, nonce)
                    cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                    chain = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
                    evidence_list.append(
                        {
                            "certificate": base64.b64encode(chain).decode("ascii"),
                            "evidence": base64.b64encode(evidence).decode("ascii"),
                        }
                    )
            except AttestationError:
                raise
            except Exception as exc:
                raise AttestationError(f"NVML attestation failed: {exc}") from exc
            finally:
                try:
                    nvml.nvmlShutdown()
                except Exception:
                    pass
        if not evidence_list:
            raise AttestationError("no NVIDIA GPU found")
        if len(arches) != 1:
            raise AttestationError(f"mixed GPU architectures: {sorted(arches)}")
        return {"nonce": nonce.hex(), "evidence_list": evidence_list, "arch": arches.pop()}


def detect(nvml: Any | None = None) -> NvmlGpuEvidence | None:
    """An evidence source when NVML is present and the GPUs are in CC or PPCIe mode, else None."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        return None
    with _NVML_LOCK:
        try:
            nvml.nvmlInit()
        except Exception:
            return None
        try:
            if gpu_mode(nvml) == "off":
                return None
        except Exception as exc:
            logger.warning("no GPU evidence: %s", exc)
            return None
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
    return NvmlGpuEvidence(nvml)


def probe(nvml: Any | None = None) -> dict[str, Any]:
    """Everything NVML says about GPU attestation on this host, errors included (for humans)."""
    out: dict[str, Any] = {"nvml_python": False}
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        out["error"] = "pynvml is not installed (pip install nvidia-ml-py)"
        return out
    out["nvml_python"] = True
    with _NVML_LOCK:
        try:
            nvml.nvmlInit()
        except Exception as exc:
            out["error"] = f"nvmlInit failed (no NVIDIA driver?): {exc}"
            return out
        try:
            out["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
            try:
                state = nvml.nvmlSystemGetConfComputeState()
                out["cc_state"] = {
                    "environment": state.environment,
                    "cc_feature": state.ccFeature,
                    "dev_tools_mode": state.devToolsMode,
                }
            except Exception as exc:
                out["cc_state_error"] = str(exc)
            try:
                out["gpu_mode"] = gpu_mode(nvml)
            except Exception as exc:
                out["gpu_mode"] = f"error: {exc}"
            out["cc_enabled"] = out["gpu_mode"] in ("cc", "ppcie")
            try:
                out["gpus_ready_state"] = nvml.nvmlSystemGetConfComputeGpusReadyState()
            except Exception as exc:
                out["gpus_ready_state_error"] = str(exc)
            gpus = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu: dict[str, Any] = {"index": index, "name": _text(nvml.nvmlDeviceGetName(handle))}
                arch_code = nvml.nvmlDeviceGetArchitecture(handle)
                gpu["arch"] = ARCH_NAMES.get(arch_code, f"code {arch_code}")
                nonce = secrets.token_bytes(NONCE_SIZE)
                try:
                    report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                    evidence = bytes(report.attestationReport[: report.attestationReportSize])
                    gpu["evidence_bytes"] = len(evidence)
                    gpu["evidence_head"] = evidence[:4].hex(" ")
                    try:
                        check_evidence_nonce(evidence, nonce)
                        gpu["nonce_check"] = "ok"
                    except AttestationError as exc:
                        gpu["nonce_check"] = f"FAILED: {exc}"
                except Exception as exc:
                    gpu["evidence_error"] = str(exc)
                try:
                    cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                    chain = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
                    gpu["cert_chain_bytes"] = len(chain)
                    gpu["cert_chain_pem_blocks"] = chain.count(b"-----BEGIN CERTIFICATE-----")
                except Exception as exc:
                    gpu["cert_chain_error"] = str(exc)
                gpus.append(gpu)
            out["gpus"] = gpus
        except Exception as exc:
            out["error"] = str(exc)
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
    out["evidence_obtained"] = bool(out.get("gpus")) and all(
        g.get("nonce_check") == "ok" for g in out.get("gpus", [])
    )
    return out


def main() -> int:
    result = probe()
    print(json.dumps(result, indent=2))
    if result.get("evidence_obtained"):
        print("GPU evidence obtained and nonce-checked.", file=sys.stderr)
        return 0
    print("No usable GPU evidence on this host (see the fields above for why).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
