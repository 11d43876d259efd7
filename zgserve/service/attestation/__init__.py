"""TEE backends and GPU evidence, one module each, chosen automatically or by name.

Other components (the broker's settlement signer) use this package directly; it
imports no web framework::

    tee = get_tee_backend("auto")
    signer = await tee.signing_key("settlement")
    quote = await tee.quote(report_data_for(signer.address, nonce))

Backends: ``tdx`` (configfs-tsm), ``dstack`` (guest agent socket), ``simulated``
(no hardware; says so in every report). GPU evidence: ``nvml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from zgserve.service.attestation.base import (
    NONCE_SIZE,
    REPORT_DATA_SIZE,
    AttestationError,
    GpuEvidenceSource,
    TeeBackend,
    TeeQuote,
    report_data_for,
)

logger = logging.getLogger(__name__)

# Where dstack guest agents put their socket, searched in order after dstack.find_socket's
# standard paths: newer images use /run, some mount the agent's directory under /var/run/dstack.
DSTACK_SOCKET_SEARCH = (Path("/run/dstack.sock"), Path("/var/run/dstack/dstack.sock"))

TeeName = Literal["auto", "tdx", "dstack", "simulated"]
GpuName = Literal["auto", "nvml", "off"]

__all__ = [
    "NONCE_SIZE",
    "REPORT_DATA_SIZE",
    "AttestationError",
    "GpuEvidenceSource",
    "TeeBackend",
    "TeeQuote",
    "detect_tee",
    "get_gpu_evidence_source",
    "get_tee_backend",
    "report_data_for",
]


def _find_dstack_socket(configured: Path | None) -> Path | None:
    """The configured socket, else the first of the standard and extra search paths that is one."""
    from zgserve.service.attestation import dstack

    found = dstack.find_socket(configured)
    if found is not None or configured is not None:
        return found
    return next((p for p in DSTACK_SOCKET_SEARCH if dstack.find_socket(p) is not None), None)


def detect_tee(dstack_socket: Path | None = None) -> str:
    """Which TEE this host offers: ``dstack``, ``tdx`` or ``simulated`` (logging why, when simulated)."""
    from zgserve.service.attestation import tdx

    if _find_dstack_socket(dstack_socket) is not None:
        return "dstack"
    provider, why = tdx.probe_provider_reason()
    if provider == tdx.TDX_PROVIDER:
        return "tdx"
    logger.warning(
        "auto: no TEE hardware found, falling back to SIMULATED: no dstack socket (%s); TDX: %s",
        dstack_socket or "standard paths",
        why,
    )
    return "simulated"


def get_tee_backend(
    name: TeeName = "auto",
    *,
    dstack_socket: Path | None = None,
    simulated_key_file: Path | None = None,
    require_hardware: bool = False,
) -> TeeBackend:
    """The TEE backend called ``name``, or the one this host offers for ``auto``.

    Raises AttestationError when the named backend is not available here, or when
    ``require_hardware`` is set and only the simulated backend is left.
    """
    resolved = detect_tee(dstack_socket) if name == "auto" else name
    if resolved == "dstack":
        from zgserve.service.attestation.dstack import DstackTee

        socket = _find_dstack_socket(dstack_socket)
        if socket is None:
            raise AttestationError(f"no dstack socket at {dstack_socket or '/var/run/dstack.sock'}")
        backend: TeeBackend = DstackTee(socket)
    elif resolved == "tdx":
        from zgserve.service.attestation.tdx import TDX_PROVIDER, TdxTee, probe_provider

        provider = probe_provider()
        if provider != TDX_PROVIDER:
            raise AttestationError(f"no TDX configfs-tsm provider here (found {provider!r})")
        backend = TdxTee()
    elif resolved == "simulated":
        if require_hardware:
            raise AttestationError(
                "TEE hardware is required but none was found (dstack socket, configfs-tsm)"
            )
        from zgserve.service.attestation.simulated import SimulatedTee

        backend = SimulatedTee(simulated_key_file)
    else:
        raise AttestationError(f"unknown TEE backend {name!r}")
    logger.info("TEE backend: %s", backend.name)
    return backend


def get_gpu_evidence_source(name: GpuName = "auto") -> GpuEvidenceSource | None:
    """NVML evidence for ``nvml`` (error if unusable), when usable for ``auto``, None for ``off``."""
    if name == "off":
        return None
    from zgserve.service.attestation import nvidia

    source = nvidia.detect()
    if source is None and name == "nvml":
        raise AttestationError(
            "GPU evidence requested but NVML is unavailable or confidential computing is off "
            "(python -m zgserve.service.attestation.nvidia tells why)"
        )
    return source
