"""What every TEE backend and GPU evidence source provides.

Kept free of third-party imports so that ``python -m zgserve.service.attestation.nvidia``
runs on a bare GPU host with only ``nvidia-ml-py`` installed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from zgserve.common.signing import Signer

REPORT_DATA_SIZE = 64
NONCE_SIZE = 32


class AttestationError(Exception):
    """Evidence could not be produced (hardware missing, driver error, bad nonce echo)."""


def report_data_for(address: str, nonce: bytes) -> bytes:
    """TDX ``report_data``: the 20-byte address right-padded with zeros to 32 bytes, then the nonce."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("the nonce is 32 bytes")
    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError("an address is 20 bytes")
    return raw.ljust(32, b"\x00") + nonce


@dataclass(frozen=True)
class TeeQuote:
    """CPU TEE evidence for one ``report_data``.

    ``quote`` is None when there is no hardware quote (simulated mode); ``event_log``
    is passed through as the backend gives it (dstack: a JSON string).
    """

    tee: str
    quote: bytes | None
    report_data: bytes
    event_log: Any = ""
    info: dict[str, Any] = field(default_factory=dict)


class TeeBackend(ABC):
    """A TEE runtime: makes signing keys inside it and quotes over ``report_data``."""

    name: ClassVar[str]
    is_hardware: ClassVar[bool]

    @abstractmethod
    async def signing_key(self, purpose: str) -> Signer:
        """A secp256k1 key for ``purpose`` ("service", "settlement", ...), created or derived in the TEE.

        Backends that can derive keys (dstack) return the same key for the same purpose
        across restarts; the others create a fresh key held only in memory.
        """

    @abstractmethod
    async def quote(self, report_data: bytes) -> TeeQuote:
        """Evidence binding ``report_data`` (at most 64 bytes, zero-padded) to this TEE."""

    async def close(self) -> None:  # noqa: B027  # optional hook, most backends hold nothing
        """Release connections."""

    def describe(self) -> dict[str, Any]:
        return {"tee": self.name, "hardware": self.is_hardware}


class GpuEvidenceSource(ABC):
    """Produces NVIDIA GPU evidence (the ``nvidia_payload`` object) for a 32-byte nonce."""

    name: ClassVar[str]
    is_hardware: ClassVar[bool]

    @abstractmethod
    async def evidence(self, nonce: bytes) -> dict[str, Any]:
        """``{"nonce", "evidence_list": [{"certificate", "evidence"}], "arch"}``; raises AttestationError."""

    def describe(self) -> dict[str, Any]:
        return {"gpu": self.name, "hardware": self.is_hardware}
