"""JSON parsing that cannot crash the process or answer 500.

Every JSON value a client controls (request bodies, session tokens, headers) is
parsed here, after three bounds that the parser never sees violated:

* size: the caller's byte limit;
* encoding: strict UTF-8 (``json.loads`` on bytes would also guess UTF-16/32, a
  second way to read the same body);
* depth: nesting is counted on the raw bytes before parsing. CPython's JSON
  decoder recurses once per level, and with a raised recursion limit (py_ecc
  raises it to 100000 at import) a deeply nested value overflows the C stack
  and kills the process instead of raising.

``NaN`` and ``Infinity`` are refused (not JSON, and never a valid number for us),
and so are duplicate keys in objects: two parsers that keep different duplicates
read two different requests from the same bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from zgserve.common.errors import BadRequest, PayloadTooLarge

DEFAULT_MAX_DEPTH = 64
# A string token (skipped whole) or one structural bracket.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class InvalidJson(BadRequest):
    code = "invalid_json"


class JsonTooDeep(BadRequest):
    code = "json_too_deep"


def nesting_depth(data: bytes, limit: int) -> int:
    """The deepest nesting of ``data``'s arrays and objects, counting no further than ``limit + 1``."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0  # cannot be deeper than the number of openers; the common case costs two scans in C
    depth = deepest = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def loads(
    data: bytes | str,
    *,
    max_bytes: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    what: str = "the request body",
) -> Any:
    """Parse ``data`` within the bounds; :class:`InvalidJson`, :class:`JsonTooDeep` or
    :class:`PayloadTooLarge` (all client errors) otherwise."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if max_bytes is not None and len(raw) > max_bytes:
        raise PayloadTooLarge(f"{what} is over the limit of {max_bytes} bytes")
    if nesting_depth(raw, max_depth) > max_depth:
        raise JsonTooDeep(f"{what} nests JSON deeper than {max_depth} levels")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, syntax, duplicate keys and integers past Python's digit limit.
        raise InvalidJson(f"{what} is not valid JSON: {_short(exc)}") from None


def loads_object(data: bytes | str, **bounds: Any) -> dict[str, Any]:
    """:func:`loads`, and the value must be a JSON object."""
    value = loads(data, **bounds)
    if not isinstance(value, dict):
        raise InvalidJson(f"{bounds.get('what', 'the request body')} must be a JSON object")
    return value


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"
