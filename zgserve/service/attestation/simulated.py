"""Simulated TEE: for machines without TEE hardware, and honest about it.

Nothing here can be mistaken for evidence: there is no quote (``intel_quote`` is the
empty string), the event log is empty, and ``info`` carries a warning. The service
report's binding (``report_data``, hex) is still computed, so clients can exercise their
code paths, but a report from this backend proves nothing about where the key lives.
The broker's ``/v1/quote`` carries :data:`SIMULATED_REPORT_DATA` instead of the address,
because the SDK's signer check reads that field alone and ignores every label.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from zgserve.common.signing import Signer
from zgserve.service.attestation.base import TeeBackend, TeeQuote

logger = logging.getLogger(__name__)

SIMULATED_WARNING = (
    "SIMULATED: no TEE hardware. This report carries no hardware evidence and proves nothing about "
    "where the signing key is kept."
)

# What ``/v1/quote`` puts in ``report_data`` (base64) in simulated mode. The SDK decodes it,
# strips NULs and compares it with the on-chain signer: this text is no address, so the SDK
# shows it and reports a mismatch, and the compose check finds no event log.
SIMULATED_REPORT_DATA = b"SIMULATED-TEE:NOT-ATTESTED"


class SimulatedTee(TeeBackend):
    """Keys in process memory (or a plain key file, if configured); no quotes."""

    name = "simulated"
    is_hardware = False

    def __init__(self, key_file: Path | None = None) -> None:
        self.key_file = key_file

    async def signing_key(self, purpose: str) -> Signer:
        if self.key_file is None:
            return Signer.generate()
        return self._key_from_file(purpose)

    def _key_from_file(self, purpose: str) -> Signer:
        # One JSON object {purpose: hex key}; mode 0600. Plain text on disk: simulated mode only.
        assert self.key_file is not None
        keys: dict[str, Any] = {}
        if self.key_file.exists():
            keys = json.loads(self.key_file.read_text())
        if purpose in keys:
            return Signer.from_hex(str(keys[purpose]))
        signer = Signer.generate()
        keys[purpose] = signer.private_key_bytes().hex()
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_file.with_suffix(self.key_file.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(keys, fh)
        tmp.replace(self.key_file)
        logger.warning("simulated TEE: stored a new %r key in %s (not sealed)", purpose, self.key_file)
        return signer

    async def quote(self, report_data: bytes) -> TeeQuote:
        return TeeQuote(
            tee=self.name,
            quote=None,
            report_data=report_data.ljust(64, b"\x00"),
            event_log="",
            info={"tee": self.name, "simulated": True, "warning": SIMULATED_WARNING},
        )
