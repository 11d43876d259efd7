"""Intel TDX quotes through the kernel's configfs-tsm interface (Linux 6.7+).

A report entry is a directory under ``/sys/kernel/config/tsm/report``: write at
most 64 bytes of report data to ``inblob``, read the quote from ``outblob``.
``generation`` counts writes, so a concurrent writer to the same entry is
detected; each call uses its own entry and calls are serialised anyway.

The signing key is generated in the TD's memory and never written anywhere: it
lives as long as the process, and a restart makes a new one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from zgserve.common.signing import Signer
from zgserve.common.tdx_quote import TdxQuoteError, parse_tdx_quote
from zgserve.service.attestation.base import REPORT_DATA_SIZE, AttestationError, TeeBackend, TeeQuote

logger = logging.getLogger(__name__)

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
TDX_PROVIDER = "tdx_guest"
# The kernel answers EBUSY while another write to the entry is in flight and ETIMEDOUT when
# the host's quoting service is slow: both pass, so the quote is asked again, a bounded number
# of times with a growing pause.
RETRY_ERRNOS = frozenset({errno.EBUSY, errno.ETIMEDOUT})
QUOTE_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.1


def probe_provider_reason(base: Path = TSM_REPORT_DIR) -> tuple[str | None, str]:
    """The configfs-tsm provider name (``tdx_guest`` in a TD) or None, and why, for logs."""
    if not base.is_dir():
        return None, f"{base} does not exist (configfs not mounted, kernel before 6.7, or not a TD)"
    entry = base / f"zgserve-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        entry.mkdir()
    except PermissionError as exc:
        return None, f"no permission to create a report entry under {base} ({exc}): run as root or grant it"
    except OSError as exc:
        return None, f"cannot create a report entry under {base}: {exc}"
    try:
        provider = (entry / "provider").read_text().strip() or None
        return provider, f"configfs-tsm provider is {provider!r}"
    except OSError as exc:
        return None, f"cannot read the configfs-tsm provider: {exc}"
    finally:
        try:
            entry.rmdir()
        except OSError:
            pass


def probe_provider(base: Path = TSM_REPORT_DIR) -> str | None:
    """The configfs-tsm provider name (``tdx_guest`` in a TD), or None when there is none."""
    return probe_provider_reason(base)[0]


class _Retryable(Exception):
    """A configfs-tsm errno the kernel documents as transient; ``__cause__`` is the OSError."""


class TdxTee(TeeBackend):
    """TDX via configfs-tsm; keys made in TD memory."""

    name = "tdx"
    is_hardware = True

    def __init__(
        self,
        base: Path = TSM_REPORT_DIR,
        *,
        attempts: int = QUOTE_ATTEMPTS,
        backoff_s: float = RETRY_BACKOFF_S,
    ) -> None:
        self.base = base
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._lock = threading.Lock()

    async def signing_key(self, purpose: str) -> Signer:
        return Signer.generate()

    async def quote(self, report_data: bytes) -> TeeQuote:
        if len(report_data) > REPORT_DATA_SIZE:
            raise ValueError("report_data is at most 64 bytes")
        padded = report_data.ljust(REPORT_DATA_SIZE, b"\x00")
        quote = await asyncio.to_thread(self._quote_sync, padded)
        return TeeQuote(
            tee=self.name,
            quote=quote,
            report_data=padded,
            event_log="",
            info={"tee": self.name, "provider": TDX_PROVIDER, "source": "configfs-tsm"},
        )

    def _quote_sync(self, report_data: bytes) -> bytes:
        for attempt in range(1, self.attempts + 1):
            try:
                return self._quote_once(report_data)
            except _Retryable as exc:
                if attempt == self.attempts:
                    raise AttestationError(
                        f"configfs-tsm quote failed {self.attempts} times: {exc.__cause__}"
                    ) from exc.__cause__
                logger.warning("configfs-tsm busy (%s), attempt %d; retrying", exc.__cause__, attempt)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AttestationError("configfs-tsm quote was not attempted")  # attempts < 1

    def _quote_once(self, report_data: bytes) -> bytes:
        with self._lock:
            entry = self.base / f"zgserve-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            try:
                entry.mkdir()
            except OSError as exc:
                raise AttestationError(f"cannot create a configfs-tsm report entry: {exc}") from exc
            try:
                provider = (entry / "provider").read_text().strip()
                if provider != TDX_PROVIDER:
                    raise AttestationError(f"configfs-tsm provider is {provider!r}, not {TDX_PROVIDER}")
                before = int((entry / "generation").read_text())
                (entry / "inblob").write_bytes(report_data)
                quote = (entry / "outblob").read_bytes()
                after = int((entry / "generation").read_text())
            except OSError as exc:
                if exc.errno in RETRY_ERRNOS:
                    raise _Retryable() from exc
                raise AttestationError(f"configfs-tsm quote failed: {exc}") from exc
            finally:
                try:
                    entry.rmdir()
                except OSError:
                    pass
        if after != before + 1:
            # Another writer changed inblob between our write and read: the quote may be theirs.
            raise _Retryable() from AttestationError("the report entry was written concurrently")
        try:
            body = parse_tdx_quote(quote)
        except TdxQuoteError as exc:
            raise AttestationError(f"configfs-tsm returned an unusable quote: {exc}") from exc
        if body.report_data != report_data:
            raise AttestationError("the quote does not carry the requested report_data")
        return quote
