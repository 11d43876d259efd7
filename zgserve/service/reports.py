"""Attestation reports: the shared wire contract, built from a TEE quote and GPU evidence.

``report_data`` = signing address padded to 32 bytes + the 32-byte nonce; the GPU
evidence is requested with the same nonce. A report without a client nonce uses a
server nonce and is cached, refreshed in the background every ``refresh_s``.

With a hardware quote the report also carries, at the top level, what the official
verifiers read (the SDK names this report ``llm`` and tells users to post it to
dstack-verifier): ``quote``, ``event_log``, ``vm_config`` and ``tcb_info`` as the TEE
runtime gave them (see :func:`zgserve.service.attestation.dstack.verifier_fields`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

from zgserve.common.signing import SIGNING_ALGO
from zgserve.service.attestation import (
    NONCE_SIZE,
    AttestationError,
    GpuEvidenceSource,
    TeeBackend,
    report_data_for,
)
from zgserve.service.attestation.dstack import verifier_fields
from zgserve.service.attestation.simulated import SIMULATED_WARNING

logger = logging.getLogger(__name__)


class ReportService:
    """Builds attestation reports for one signing address."""

    def __init__(
        self,
        tee: TeeBackend,
        gpu: GpuEvidenceSource | None,
        signing_address: str,
        *,
        refresh_s: float = 300.0,
    ) -> None:
        self.tee = tee
        self.gpu = gpu
        self.signing_address = signing_address
        self.refresh_s = refresh_s
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Build the first cached report (errors logged, not raised) and start refreshing it."""
        try:
            await self._refresh()
        except AttestationError as exc:
            logger.error("initial attestation report failed: %s", exc)
        self._task = asyncio.create_task(self._refresher(), name="attestation-report-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def report(self, nonce: bytes | None = None) -> dict[str, Any]:
        """The report for ``nonce``; without one, the cached report (built now if stale)."""
        if nonce is not None:
            return await self.build(nonce)
        if self._cached is None or time.monotonic() - self._cached_at > 2 * self.refresh_s:
            async with self._lock:
                if self._cached is None or time.monotonic() - self._cached_at > 2 * self.refresh_s:
                    await self._refresh()
        assert self._cached is not None
        return self._cached

    async def build(self, nonce: bytes) -> dict[str, Any]:
        """A fresh report bound to ``nonce`` (32 bytes); raises AttestationError."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError("the nonce is 32 bytes")
        report_data = report_data_for(self.signing_address, nonce)
        quote = await self.tee.quote(report_data)
        # An empty quote (dstack without TDX under it) binds nothing: labelled as simulated.
        simulated = not self.tee.is_hardware or not quote.quote
        entry: dict[str, Any] = {
            "signing_address": self.signing_address,
            "signing_algo": SIGNING_ALGO,
            "request_nonce": nonce.hex(),
            "tee": quote.tee,
            "report_data": quote.report_data.hex(),
            "intel_quote": quote.quote.hex() if quote.quote is not None else "",
            "nvidia_payload": await self._nvidia_payload(nonce, simulated),
            "event_log": quote.event_log,
            "info": quote.info,
        }
        entry.update(verifier_fields(quote))
        if simulated:
            entry["simulated"] = True
            entry["warning"] = SIMULATED_WARNING
        return {**entry, "all_attestations": [dict(entry)]}

    async def _nvidia_payload(self, nonce: bytes, simulated: bool) -> str:
        reason = "no GPU evidence source on this host (no NVML, or confidential computing is off)"
        if self.gpu is not None:
            try:
                return json.dumps(await self.gpu.evidence(nonce), separators=(",", ":"))
            except AttestationError as exc:
                logger.warning("GPU evidence failed: %s", exc)
                reason = f"GPU evidence failed: {exc}"
        # Not evidence, and shaped so that it cannot pass for evidence: no certificates, no reports.
        marker: dict[str, Any] = {"nonce": nonce.hex(), "evidence_list": [], "arch": None}
        if simulated:
            marker["simulated"] = True
        marker["available"] = False
        marker["reason"] = reason
        return json.dumps(marker, separators=(",", ":"))

    async def _refresh(self) -> None:
        self._cached = await self.build(secrets.token_bytes(NONCE_SIZE))
        self._cached_at = time.monotonic()

    async def _refresher(self) -> None:
        backoff = 1.0
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                async with self._lock:
                    await self._refresh()
                backoff = 1.0
            except AttestationError as exc:
                logger.error("attestation report refresh failed: %s (retry in %.0f s)", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.refresh_s)
