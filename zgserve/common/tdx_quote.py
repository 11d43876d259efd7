"""The fields of an Intel TDX quote that attestation checks read, for quote versions 4 and 5.

Both versions start with the same 48-byte header (version, attestation key type,
TEE type, ...). Version 4 puts the TD report body right after it. Version 5 puts a
descriptor first (2-byte body type, 4-byte body size) and then the body, which is
either a TD report 1.0 body (type 2, 584 bytes, the same layout as version 4) or a
TD report 1.5 body (type 3, 648 bytes: the 1.0 body followed by TEE_TCB_SVN_2 and
MRSERVICETD). The fields read here sit at the same offsets inside either body, so
only where the body starts differs. Anything else is refused rather than guessed:
reading a v5 quote at v4 offsets yields a report_data shifted by six bytes.

This is layout only; the quote's signature chain is Intel's to check (dcap-qvl, PCCS).
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_SIZE = 48
TDX_TEE_TYPE = 0x81
TD_REPORT_10_SIZE = 584
TD_REPORT_15_SIZE = 648
# Version 5 body types (Intel's TDX DCAP quote library): 1 is an SGX enclave report.
BODY_TYPE_TD_REPORT_10 = 2
BODY_TYPE_TD_REPORT_15 = 3
_V5_BODY_SIZES = {BODY_TYPE_TD_REPORT_10: TD_REPORT_10_SIZE, BODY_TYPE_TD_REPORT_15: TD_REPORT_15_SIZE}
_V5_DESCRIPTOR_SIZE = 6

# Offsets inside the TD report body (the same in the 1.0 and 1.5 bodies).
_TD_ATTRIBUTES = slice(120, 128)
_MRTD = slice(136, 184)
_REPORT_DATA = slice(520, 584)


class TdxQuoteError(ValueError):
    """The bytes are not a TDX quote of a version and body type this parser knows."""


@dataclass(frozen=True)
class TdxQuoteBody:
    """What the checks read from a TDX quote, whatever its version."""

    version: int
    body_type: int  # 2 (TD report 1.0) or 3 (TD report 1.5); version 4 is always 2
    td_attributes: bytes
    mrtd: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        """TUD.DEBUG, bit 0 of TD attributes: a debug TD's memory is readable by the host."""
        return bool(self.td_attributes[0] & 1)


def parse_tdx_quote(quote: bytes) -> TdxQuoteBody:
    """The TD report fields of a version 4 or 5 TDX quote; raises TdxQuoteError otherwise."""
    if len(quote) < HEADER_SIZE:
        raise TdxQuoteError(f"{len(quote)} bytes: shorter than a quote header")
    version = int.from_bytes(quote[0:2], "little")
    tee_type = int.from_bytes(quote[4:8], "little")
    if tee_type != TDX_TEE_TYPE:
        raise TdxQuoteError(f"TEE type {tee_type:#x} is not TDX ({TDX_TEE_TYPE:#x})")
    if version == 4:
        body_type, start, size = BODY_TYPE_TD_REPORT_10, HEADER_SIZE, TD_REPORT_10_SIZE
    elif version == 5:
        if len(quote) < HEADER_SIZE + _V5_DESCRIPTOR_SIZE:
            raise TdxQuoteError(f"{len(quote)} bytes: too short for a version 5 body descriptor")
        body_type = int.from_bytes(quote[HEADER_SIZE : HEADER_SIZE + 2], "little")
        size = int.from_bytes(quote[HEADER_SIZE + 2 : HEADER_SIZE + _V5_DESCRIPTOR_SIZE], "little")
        expected = _V5_BODY_SIZES.get(body_type)
        if expected is None:
            raise TdxQuoteError(f"version 5 body type {body_type} is not a TD report (2 or 3)")
        if size != expected:
            raise TdxQuoteError(f"version 5 body type {body_type} declares {size} bytes, not {expected}")
        start = HEADER_SIZE + _V5_DESCRIPTOR_SIZE
    else:
        raise TdxQuoteError(f"TDX quote version {version} is not supported (4 and 5 are)")
    if len(quote) < start + size:
        raise TdxQuoteError(f"{len(quote)} bytes: too short for a version {version} quote body")
    body = quote[start : start + size]
    return TdxQuoteBody(
        version=version,
        body_type=body_type,
        td_attributes=bytes(body[_TD_ATTRIBUTES]),
        mrtd=bytes(body[_MRTD]),
        report_data=bytes(body[_REPORT_DATA]),
    )
