"""TEE backends and GPU evidence, each against a stand-in for its hardware interface."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.fakes.nvml import StandInNvml
from zgserve.common.signing import Signer
from zgserve.service.attestation import (
    DSTACK_SOCKET_SEARCH,
    AttestationError,
    detect_tee,
    get_tee_backend,
    report_data_for,
)
from zgserve.service.attestation import tdx as tdx_module
from zgserve.service.attestation.dstack import DstackTee
from zgserve.service.attestation.nvidia import NvmlGpuEvidence, detect, probe
from zgserve.service.attestation.simulated import SimulatedTee
from zgserve.service.attestation.tdx import TdxTee, probe_provider, probe_provider_reason

NONCE = bytes(range(32))


def test_report_data_layout() -> None:
    address = "0x" + "ab" * 20
    data = report_data_for(address, NONCE)
    assert data == bytes.fromhex("ab" * 20) + b"\x00" * 12 + NONCE
    with pytest.raises(ValueError, match="32 bytes"):
        report_data_for(address, b"short")


def test_auto_is_simulated_here_and_hardware_can_be_required() -> None:
    assert get_tee_backend("auto", dstack_socket=Path("/nonexistent.sock")).name == "simulated"
    with pytest.raises(AttestationError, match="required"):
        get_tee_backend("auto", dstack_socket=Path("/nonexistent.sock"), require_hardware=True)
    with pytest.raises(AttestationError):
        get_tee_backend("tdx")


async def test_simulated_quote_is_plainly_not_evidence() -> None:
    quote = await SimulatedTee().quote(b"\x01" * 64)
    assert quote.quote is None
    assert quote.tee == "simulated"
    assert quote.event_log == ""
    assert quote.info["simulated"] is True
    assert "SIMULATED" in quote.info["warning"]


async def test_simulated_key_file_keeps_one_key_per_purpose(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "simulated.json"
    first = await SimulatedTee(key_file).signing_key("service")
    again = await SimulatedTee(key_file).signing_key("service")
    other = await SimulatedTee(key_file).signing_key("settlement")
    assert first.address == again.address != other.address
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert (await SimulatedTee().signing_key("service")).address != first.address


async def test_tdx_outside_a_td_fails_honestly(tmp_path: Path) -> None:
    assert probe_provider(tmp_path / "missing") is None
    with pytest.raises(AttestationError):
        await TdxTee(tmp_path).quote(b"x" * 64)  # a plain directory is no configfs-tsm


@pytest.fixture
async def dstack_socket(tmp_path: Path) -> AsyncIterator[Path]:
    """A stand-in dstack guest agent on a unix socket."""
    key = bytes(range(1, 33))

    async def get_key(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["path"].startswith("zgserve/")
        return web.json_response({"key": key.hex(), "signature_chain": ["00"]})

    async def get_quote(request: web.Request) -> web.Response:
        report_data = bytes.fromhex((await request.json())["report_data"])
        quote = bytearray(700)
        quote[0:2] = (4).to_bytes(2, "little")
        quote[568:632] = report_data
        return web.json_response({"quote": quote.hex(), "event_log": "[]", "report_data": report_data.hex()})

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"app_id": "abc", "tcb_info": "{}"})

    app = web.Application()
    app.router.add_post("/GetKey", get_key)
    app.router.add_post("/GetQuote", get_quote)
    app.router.add_get("/Info", info)
    runner = web.AppRunner(app)
    await runner.setup()
    path = Path(f"/tmp/zg-dstack-{os.getpid()}-{secrets.token_hex(4)}.sock")  # short: AF_UNIX path limit
    await web.UnixSite(runner, str(path)).start()
    try:
        yield path
    finally:
        await runner.cleanup()
        os.unlink(path)


async def test_dstack_fake_guest_agent_derives_a_stable_key_and_quotes_stand_in(dstack_socket: Path) -> None:
    tee = get_tee_backend("auto", dstack_socket=dstack_socket)
    assert isinstance(tee, DstackTee)
    try:
        signer = await tee.signing_key("service")
        assert signer.address == Signer(bytes(range(1, 33))).address
        report_data = report_data_for(signer.address, NONCE)
        quote = await tee.quote(report_data)
        assert quote.tee == "dstack"
        assert quote.quote is not None
        assert quote.quote[568:632] == report_data
        assert quote.info["app_id"] == "abc"
        assert quote.event_log == "[]"
    finally:
        await tee.close()


async def test_nvml_fake_driver_evidence_is_nonce_checked_and_serialised_stand_in() -> None:
    nvml = StandInNvml(legacy=True)
    source = detect(nvml)
    assert source is not None
    payloads = await asyncio.gather(*(source.evidence(bytes([i]) * 32) for i in range(6)))
    assert nvml.max_active == 1  # NVML calls never overlapped
    for i, payload in enumerate(payloads):
        assert payload["nonce"] == (bytes([i]) * 32).hex()
        assert payload["arch"] == "HOPPER"
        assert len(payload["evidence_list"]) == 2
        assert set(payload["evidence_list"][0]) == {"certificate", "evidence"}


async def test_nvml_fake_driver_wrong_nonce_and_cc_off_are_refused_stand_in() -> None:
    with pytest.raises(AttestationError, match="nonce"):
        await NvmlGpuEvidence(StandInNvml(echo_nonce=False, legacy=True)).evidence(NONCE)
    assert detect(StandInNvml(cc=0, legacy=True)) is None
    with pytest.raises(AttestationError, match="off"):
        await NvmlGpuEvidence(StandInNvml(cc=0, legacy=True)).evidence(NONCE)
    found = probe(StandInNvml(cc=0, legacy=True))
    assert found["cc_enabled"] is False
    assert found["gpus"][0]["nonce_check"] == "ok"
    assert json.dumps(found)  # printable by the standalone run


class FlakyConfigfsTdx(TdxTee):
    """A stand-in for the kernel's configfs-tsm that answers ``errors`` before a quote."""

    def __init__(self, errors: list[int]) -> None:
        super().__init__(Path("/nonexistent"), attempts=3, backoff_s=0.001)
        self.errors = errors
        self.calls = 0

    def _quote_once(self, report_data: bytes) -> bytes:
        self.calls += 1
        if self.errors:
            code = self.errors.pop(0)
            try:
                raise OSError(code, os.strerror(code))
            except OSError as exc:
                raise tdx_module._Retryable() from exc
        quote = bytearray(700)
        quote[0:2], quote[4:8] = (4).to_bytes(2, "little"), (0x81).to_bytes(4, "little")
        quote[568:632] = report_data
        return bytes(quote)


async def test_configfs_tsm_ebusy_and_etimedout_are_retried_boundedly_stand_in() -> None:
    tee = FlakyConfigfsTdx([errno.EBUSY, errno.ETIMEDOUT])
    quote = await tee.quote(b"r" * 64)
    assert tee.calls == 3
    assert quote.quote is not None
    assert quote.quote[568:632] == b"r" * 64
    busy = FlakyConfigfsTdx([errno.EBUSY] * 5)
    with pytest.raises(AttestationError, match="failed 3 times"):
        await busy.quote(b"r")
    assert busy.calls == 3


def test_auto_fallback_says_why_it_is_simulated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    provider, why = probe_provider_reason(tmp_path / "missing")
    assert provider is None
    assert "does not exist" in why
    assert "configfs" in why
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "report"
        locked.mkdir(mode=0o500)
        assert "no permission" in probe_provider_reason(locked)[1]
    with caplog.at_level(logging.WARNING):
        assert detect_tee(tmp_path / "no.sock") == "simulated"
    assert "falling back to SIMULATED" in caplog.text
    assert "TDX:" in caplog.text


def test_dstack_socket_search_paths(dstack_socket: Path) -> None:
    assert (Path("/run/dstack.sock"), Path("/var/run/dstack/dstack.sock")) == DSTACK_SOCKET_SEARCH
    assert detect_tee(dstack_socket) == "dstack"
