"""dstack (Phala's TEE runtime): quotes and derived keys from the guest agent socket.

``/var/run/dstack.sock`` serves ``GetQuote`` (report data up to 64 bytes, hex),
``GetKey`` (a secp256k1 key derived from the app's identity and a path: the same
key after every restart of the same app) and ``Info`` (app, compose and TCB
details). The legacy ``/var/run/tappd.sock`` serves only ``Tappd.TdxQuote`` in
raw mode here; with it the signing key is made in memory.

The agent's answers are passed on as it sends them: ``event_log``, ``vm_config`` and
``Info.tcb_info`` are JSON *strings*. :func:`verifier_fields` lifts them to the top level
of a report, where the official verifiers look for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp

from zgserve.common.signing import Signer
from zgserve.service.attestation.base import REPORT_DATA_SIZE, AttestationError, TeeBackend, TeeQuote

logger = logging.getLogger(__name__)

DSTACK_SOCKET = Path("/var/run/dstack.sock")
TAPPD_SOCKET = Path("/var/run/tappd.sock")
KEY_PATH_PREFIX = "zgserve"


def find_socket(configured: Path | None = None) -> Path | None:
    """The dstack socket to use: the configured one, else the standard paths in order."""
    candidates = [configured] if configured is not None else [DSTACK_SOCKET, TAPPD_SOCKET]
    for path in candidates:
        if path is not None and path.is_socket():
            return path
    return None


def verifier_fields(quote: TeeQuote) -> dict[str, Any]:
    """The top-level report fields the official verifiers read, as the agent gave them.

    dstack-verifier's ``/verify`` takes top-level ``quote`` (hex), ``event_log`` and
    ``vm_config``. The SDK's ``processDStackVerification`` JSON-parses a top-level
    ``tcb_info`` string, but takes ``info.tcb_info`` only as an object, and the agent sends
    a string: without the top-level copy the compose check finds no ``app_compose``.
    Empty for a backend with no quote (simulated): nothing there to pass for evidence.
    """
    if not quote.quote:
        return {}
    fields: dict[str, Any] = {"quote": quote.quote.hex(), "event_log": quote.event_log}
    for key in ("vm_config", "tcb_info"):
        value = quote.info.get(key)
        if value is not None:
            fields[key] = value
    return fields


class DstackTee(TeeBackend):
    """TDX through the dstack guest agent."""

    name = "dstack"
    is_hardware = True

    def __init__(self, socket_path: Path, *, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path
        self.legacy = socket_path.name == TAPPD_SOCKET.name
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._info: dict[str, Any] | None = None
        self._warned_empty = False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path)), timeout=self._timeout
            )
        return self._session

    async def _call(self, method: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"http://dstack/{method}"
        try:
            if payload is None:
                async with self._client().get(url) as resp:
                    text = await resp.text()
                    status = resp.status
            else:
                async with self._client().post(url, json=payload) as resp:
                    text = await resp.text()
                    status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AttestationError(f"dstack {method} failed: {exc}") from exc
        if status != 200:
            raise AttestationError(f"dstack {method} answered {status}: {text[:200]}")
        try:
            data = json.loads(text) if text else {}
        except ValueError as exc:
            raise AttestationError(f"dstack {method} answered non-JSON") from exc
        if not isinstance(data, dict):
            raise AttestationError(f"dstack {method} answered {type(data).__name__}, not an object")
        return data

    async def signing_key(self, purpose: str) -> Signer:
        if self.legacy:
            logger.warning("tappd socket: no secp256k1 derivation; the %r key is made in memory", purpose)
            return Signer.generate()
        data = await self._call("GetKey", {"path": f"{KEY_PATH_PREFIX}/{purpose}", "purpose": "signing"})
        key = bytes.fromhex(str(data.get("key", "")).removeprefix("0x"))
        if len(key) != 32:
            raise AttestationError(f"dstack GetKey returned {len(key)} bytes, expected a 32-byte key")
        return Signer(key)

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            try:
                self._info = await self._call("prpc/Tappd.Info?json" if self.legacy else "Info")
            except AttestationError as exc:
                logger.warning("dstack Info unavailable: %s", exc)
                return {}
        return self._info

    async def quote(self, report_data: bytes) -> TeeQuote:
        if len(report_data) > REPORT_DATA_SIZE:
            raise ValueError("report_data is at most 64 bytes")
        padded = report_data.ljust(REPORT_DATA_SIZE, b"\x00")
        if self.legacy:
            data = await self._call(
                "prpc/Tappd.TdxQuote?json", {"report_data": padded.hex(), "hash_algorithm": "raw"}
            )
        else:
            data = await self._call("GetQuote", {"report_data": padded.hex()})
        try:
            quote = bytes.fromhex(str(data["quote"]).removeprefix("0x"))
        except (KeyError, ValueError) as exc:
            raise AttestationError("dstack quote answer has no hex 'quote'") from exc
        if not quote and not self._warned_empty:
            self._warned_empty = True
            logger.warning(
                "the dstack agent at %s answered an empty quote (no TDX under it): reports are "
                "labelled simulated and bind nothing",
                self.socket_path,
            )
        info = dict(await self.info())
        info.setdefault("tee", self.name)
        if "vm_config" in data:
            # The GetQuote answer's copy is the one dstack-verifier pairs with this quote.
            info["vm_config"] = data["vm_config"]
        return TeeQuote(
            tee=self.name, quote=quote, report_data=padded, event_log=data.get("event_log", ""), info=info
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
