"""Query, path and body values of the user and admin routes, bounded and typed at the edge.

Every value a client sends is checked before it is converted or reaches the
database: integers are ASCII digits of bounded length and range (``str.isdigit``
also takes "²" and "١٢", and ``int()`` of a 5000-digit string raises), addresses
have their exact form, free text is short and printable. Anything else is a
:class:`BadRequest` (400) that names the parameter.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from starlette.requests import Request

from zgserve.common import jsonsafe
from zgserve.common.errors import BadRequest, PayloadTooLarge

# The database's OFFSET/LIMIT are 64-bit; no page of ours starts past this.
MAX_OFFSET = 10**12
MAX_UINT256 = 2**256 - 1
MAX_TEXT = 256
_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")
_DIGITS = re.compile(r"[0-9]{1,78}")
_TEXT = re.compile(r"[\x20-\x7e]*")
_ISO_TIME = re.compile(r"[0-9T:.+\-Z ]{4,40}")


def parse_uint(raw: str, name: str, lo: int = 0, hi: int = MAX_UINT256) -> int:
    """``raw`` as an integer in ``[lo, hi]``, ASCII digits only."""
    if not _DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        top = hi if hi < 10**15 else f"2^{hi.bit_length()}-1"
        raise BadRequest(f"{name} must be an integer in [{lo}, {top}]", param=name)
    return int(raw)


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    return default if raw is None else parse_uint(raw, name, lo, hi)


def parse_address(raw: str, name: str) -> str:
    """A ``0x`` + 40 hex address, lower-cased (the key of a user everywhere)."""
    if not _ADDRESS.fullmatch(raw):
        raise BadRequest(f"{name} must be a 0x-prefixed 20-byte hex address", param=name)
    return raw.lower()


def path_address(request: Request, name: str = "address") -> str:
    return parse_address(str(request.path_params[name]), name)


def query_address(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    return None if not raw else parse_address(raw, name)


def query_text(request: Request, name: str, max_len: int = MAX_TEXT) -> str | None:
    """A short printable-ASCII value (ids, statuses), or None when absent or empty."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    if len(raw) > max_len or not _TEXT.fullmatch(raw):
        raise BadRequest(f"{name} must be up to {max_len} printable ASCII characters", param=name)
    return raw


def query_bool(request: Request, *names: str) -> bool | None:
    """The first of ``names`` present: true/1 or false/0; None when absent or empty."""
    for name in names:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            continue
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise BadRequest(f"{name} must be true or false", param=name)
    return None


def query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        if not _ISO_TIME.fullmatch(raw):
            raise ValueError(raw)
        return datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time", param=name) from None


async def read_json(request: Request, max_bytes: int, *, max_depth: int = 8) -> Any:
    """The request body as JSON (``{}`` when empty), read no further than ``max_bytes``.

    The content length is checked first, then the stream as it arrives (a chunked body
    has no length), so an oversized body is refused without being held in memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the request body is over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    return jsonsafe.loads(body, max_bytes=max_bytes, max_depth=max_depth)
