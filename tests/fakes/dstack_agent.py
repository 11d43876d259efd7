"""A stand-in dstack guest agent on a unix socket, replaying a recorded real agent.

``tests/fixtures/tee/dstack_recorded.json`` (a copy of ``../shared/fixtures/tee/``) (``SAMPLE_DSTACK_INFO``,
``SAMPLE_DSTACK_QUOTE``) holds what a real agent answered to ``Info`` and ``GetQuote``.
This server answers with exactly those fields, typed as the agent sends them: ``Info``'s
``tcb_info`` and ``key_provider_info`` and ``GetQuote``'s ``event_log`` are JSON *strings*
(the fixture keeps ``tcb_info`` as an object for reading; it is serialised here).

Two departures from the recording, both needed and both visible:

* ``patch_report_data`` (default on): the recorded quote binds someone else's
  ``report_data``; the answer writes the requested 64 bytes into the recorded quote at
  the TDX v4 report_data offset (48-byte header + 520 into the TD report), keeping every
  other byte. Intel's signature over the quote then no longer holds, as with any
  replayed quote.
* ``GetKey`` was not recorded: it answers a key derived from the requested path (stable,
  like the agent's), with a placeholder ``signature_chain``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

# Recorded evidence shipped with the tests (a copy of ../shared/fixtures/tee/, see its README).
RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "tee" / "dstack_recorded.json"
QUOTE_REPORT_DATA = slice(48 + 520, 48 + 520 + 64)


def load_recording(path: Path = RECORDING) -> dict[str, Any]:
    """The recorded ``Info`` and ``GetQuote`` answers, as the fixture stores them."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def agent_info(recording: dict[str, Any]) -> dict[str, Any]:
    """``Info`` as the agent sends it: ``tcb_info`` a JSON string, not an object."""
    info = dict(recording["SAMPLE_DSTACK_INFO"])
    if not isinstance(info["tcb_info"], str):
        info["tcb_info"] = json.dumps(info["tcb_info"])
    return info


class StandInDstackAgent:
    """``async with StandInDstackAgent() as agent:`` serves ``agent.socket_path``."""

    def __init__(self, recording: dict[str, Any] | None = None, *, patch_report_data: bool = True) -> None:
        self.recording = recording if recording is not None else load_recording()
        self.patch_report_data = patch_report_data
        self.quote_requests: list[bytes] = []
        self._seed = secrets.token_bytes(32)
        # Short and under /tmp: AF_UNIX paths are limited to about 100 bytes.
        self.socket_path = Path(f"/tmp/zg-dstack-{os.getpid()}-{secrets.token_hex(4)}.sock")
        self._runner: web.AppRunner | None = None

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(agent_info(self.recording))

    async def _get_quote(self, request: web.Request) -> web.Response:
        body = await request.json()
        report_data = bytes.fromhex(str(body["report_data"]).removeprefix("0x"))
        if len(report_data) > 64:
            return web.json_response({"error": "report_data is at most 64 bytes"}, status=400)
        self.quote_requests.append(report_data)
        answer = dict(self.recording["SAMPLE_DSTACK_QUOTE"])
        if self.patch_report_data:
            quote = bytearray.fromhex(answer["quote"])
            quote[QUOTE_REPORT_DATA] = report_data.ljust(64, b"\x00")
            answer["quote"] = quote.hex()
        return web.json_response(answer)

    async def _get_key(self, request: web.Request) -> web.Response:
        path = str((await request.json()).get("path", ""))
        key = hashlib.sha256(self._seed + path.encode()).hexdigest()
        return web.json_response({"key": key, "signature_chain": ["00"]})

    async def __aenter__(self) -> StandInDstackAgent:
        app = web.Application()
        app.router.add_get("/Info", self._info)
        app.router.add_post("/Info", self._info)
        app.router.add_post("/GetQuote", self._get_quote)
        app.router.add_post("/GetKey", self._get_key)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.socket_path.unlink(missing_ok=True)
