"""NVIDIA GPU evidence through NVML (H100/H200 in confidential-computing mode).

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
import json
import secrets
import sys
import threading
from types import ModuleType
from typing import Any

from zgserve.service.attestation.base import NONCE_SIZE, AttestationError, GpuEvidenceSource

SPDM_MEASUREMENTS_PREFIX = bytes([0x11, 0xE0, 0x01, 0xFF])
ARCH_NAMES = {9: "HOPPER", 10: "BLACKWELL"}
CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED

_NVML_LOCK = threading.Lock()


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
                state = nvml.nvmlSystemGetConfComputeState()
                if state.ccFeature != CC_FEATURE_ENABLED:
                    raise AttestationError("GPU confidential computing is off on this host")
                evidence_list: list[dict[str, str]] = []
                arches: set[str] = set()
                for index in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    arch = ARCH_NAMES.get(nvml.nvmlDeviceGetArchitecture(handle))
                    if arch is None:
                        raise AttestationError(f"GPU {index} has no confidential-computing attestation")
                    arches.add(arch)
                    report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                    evidence = bytes(report.attestationReport[: report.attestationReportSize])
                    check_evidence_nonce(evidence, nonce)
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
    """An evidence source when NVML is present and confidential computing is on, else None."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        return None
    with _NVML_LOCK:
        try:
            nvml.nvmlInit()
        except Exception:
            return None
        try:
            if nvml.nvmlSystemGetConfComputeState().ccFeature != CC_FEATURE_ENABLED:
                return None
        except Exception:
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
                out["cc_enabled"] = state.ccFeature == CC_FEATURE_ENABLED
            except Exception as exc:
                out["cc_state_error"] = str(exc)
                out["cc_enabled"] = False
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
