"""TDX quote layout on recorded real quotes (version 4) and on version 5 quotes built from them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from zgserve.client.verify import verify_report_local
from zgserve.common.tdx_quote import (
    BODY_TYPE_TD_REPORT_10,
    BODY_TYPE_TD_REPORT_15,
    HEADER_SIZE,
    TD_REPORT_10_SIZE,
    TD_REPORT_15_SIZE,
    TdxQuoteError,
    parse_tdx_quote,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tee"


def load(name: str) -> dict[str, Any]:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"recorded evidence {path} is missing")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def as_v5(v4_quote: bytes, body_type: int) -> bytes:
    """A version 5 quote built from a recorded version 4 one (not a real v5 recording).

    Version 5 differs by the version field and a 6-byte descriptor (body type, body
    size) before the body; a TD report 1.5 body appends TEE_TCB_SVN_2 and MRSERVICETD
    (zeros here). The signature no longer matches, which layout parsing does not read.
    """
    body = v4_quote[HEADER_SIZE : HEADER_SIZE + TD_REPORT_10_SIZE]
    size = TD_REPORT_10_SIZE
    if body_type == BODY_TYPE_TD_REPORT_15:
        body += bytes(TD_REPORT_15_SIZE - TD_REPORT_10_SIZE)
        size = TD_REPORT_15_SIZE
    header = (5).to_bytes(2, "little") + v4_quote[2:HEADER_SIZE]
    descriptor = body_type.to_bytes(2, "little") + size.to_bytes(4, "little")
    return header + descriptor + body + v4_quote[HEADER_SIZE + TD_REPORT_10_SIZE :]


def test_recorded_v4_quotes_carry_the_recorded_report_data() -> None:
    near = load("near_report.json")
    gateway = near["gateway_attestation"]
    parsed = parse_tdx_quote(bytes.fromhex(gateway["intel_quote"]))
    assert parsed.version == 4
    assert parsed.body_type == BODY_TYPE_TD_REPORT_10
    assert parsed.report_data.hex() == gateway["report_data"]
    assert parsed.mrtd.hex() == gateway["info"]["tcb_info"]["mrtd"]
    assert not parsed.debug

    model = near["model_attestations"][0]
    parsed = parse_tdx_quote(bytes.fromhex(model["intel_quote"]))
    address = bytes.fromhex(model["signing_address"].removeprefix("0x"))
    assert parsed.report_data == address.ljust(32, b"\x00") + bytes.fromhex(model["request_nonce"])
    assert parsed.mrtd.hex() == model["info"]["tcb_info"]["mrtd"]

    manager = model["compose_manager_attestation"]
    assert parse_tdx_quote(bytes.fromhex(manager["quote"])).report_data.hex() == manager["report_data"]


def test_recorded_dstack_quote_matches_the_recorded_info() -> None:
    recorded = load("dstack_recorded.json")
    parsed = parse_tdx_quote(bytes.fromhex(recorded["SAMPLE_DSTACK_QUOTE"]["quote"]))
    assert parsed.version == 4
    assert parsed.mrtd.hex() == recorded["SAMPLE_DSTACK_INFO"]["tcb_info"]["mrtd"]
    # The recording asked for 64 bytes of 0x01 (its source's sample report_data).
    assert parsed.report_data == b"\x01" * 64
    assert not parsed.debug


@pytest.mark.parametrize("body_type", [BODY_TYPE_TD_REPORT_10, BODY_TYPE_TD_REPORT_15])
def test_v5_quote_built_from_a_recording_parses_at_v5_offsets(body_type: int) -> None:
    gateway = load("near_report.json")["gateway_attestation"]
    v4 = bytes.fromhex(gateway["intel_quote"])
    parsed = parse_tdx_quote(as_v5(v4, body_type))
    assert (parsed.version, parsed.body_type) == (5, body_type)
    assert parsed.report_data.hex() == gateway["report_data"]
    assert parsed == dataclasses.replace(parse_tdx_quote(v4), version=5, body_type=body_type)


def test_verifier_reads_v4_and_v5_recorded_model_quotes() -> None:
    model = load("near_report.json")["model_attestations"][0]
    nonce = bytes.fromhex(model["request_nonce"])
    v4 = bytes.fromhex(model["intel_quote"])
    for quote in (v4, as_v5(v4, BODY_TYPE_TD_REPORT_15)):
        report = {"signing_address": model["signing_address"], "request_nonce": model["request_nonce"]}
        report |= {"tee": "dstack", "intel_quote": quote.hex(), "nvidia_payload": model["nvidia_payload"]}
        result = verify_report_local(report, nonce, expected_address=model["signing_address"])
        quote_checks = {c.name: c.status for c in result.checks if "quote" in c.name or "TD " in c.name}
        assert quote_checks["TDX quote format"] == "pass"
        assert quote_checks["quote report_data[:32] = signing address"] == "pass"
        assert quote_checks["quote report_data[32:] = nonce"] == "pass"
        assert quote_checks["TD is not a debug TD"] == "pass"


def test_unknown_versions_and_body_types_are_refused_clearly() -> None:
    v4 = bytes.fromhex(load("near_report.json")["gateway_attestation"]["intel_quote"])
    with pytest.raises(TdxQuoteError, match="version 3 is not supported"):
        parse_tdx_quote((3).to_bytes(2, "little") + v4[2:])
    with pytest.raises(TdxQuoteError, match="body type 1 is not a TD report"):
        parse_tdx_quote(as_v5(v4, 1))
    wrong_size = bytearray(as_v5(v4, BODY_TYPE_TD_REPORT_10))
    wrong_size[HEADER_SIZE + 2 : HEADER_SIZE + 6] = (600).to_bytes(4, "little")
    with pytest.raises(TdxQuoteError, match="declares 600 bytes"):
        parse_tdx_quote(bytes(wrong_size))
    with pytest.raises(TdxQuoteError, match="not TDX"):
        parse_tdx_quote(v4[:4] + (0).to_bytes(4, "little") + v4[8:])
    with pytest.raises(TdxQuoteError, match="too short"):
        parse_tdx_quote(v4[:600])
