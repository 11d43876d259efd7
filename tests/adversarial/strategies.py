"""Hypothesis strategies for hostile inputs: path variants, odd values, JSON, bodies."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# The broker's own routes under /v1/proxy, as the route table will name them.
BILLED = ("/v1/proxy/chat/completions", "/v1/proxy/completions")
ANONYMOUS = ("/v1/proxy/models", "/v1/proxy/attestation/report", "/v1/proxy/signature/{id}")

CHAT_BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
COMPLETION_BODY = {"model": "fake-model", "prompt": "hello there", "max_tokens": 4}


def body_for(path: str) -> dict[str, Any]:
    return dict(COMPLETION_BODY if path.endswith("/v1/proxy/completions") else CHAT_BODY)


def encoded(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


# ---- values ---------------------------------------------------------------------------------

UNICODE_DIGITS = st.text(
    alphabet=st.sampled_from("٠١٢٣٤٥٦٧٨٩۱۲۳०१२३০১২৩๑๒๓０１２３²³¹⁴₁₂①②⑴⒈𝟏𝟐𝟘"), min_size=1, max_size=12
)
HUGE_INTS = st.sampled_from([2**63, 2**64 + 1, -(2**63) - 1, 10**30, 10**77, 10**78, -1, 0, -5])
TEXT = st.text(max_size=40)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    HUGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e30, -1e30, 1e308, 5e-324, 0.5, -0.0]),
    TEXT,
    UNICODE_DIGITS,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(TEXT, st.integers(), max_size=3),
    st.integers(min_value=2, max_value=60).map(nested),
    st.sampled_from(["x", "", "null", "1e30", "-5", "٣", "²", "0x10", " 4", "4 ", "\x00", "\ud800x"]),
)

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)

# ---- paths ----------------------------------------------------------------------------------


def _pct(ch: str, lower: bool) -> str:
    return "".join(f"%{b:02x}" if lower else f"%{b:02X}" for b in ch.encode())


@st.composite
def path_variant(draw: st.DrawFn, base: str) -> str:
    """``base`` after 1-3 RFC 3986 tricks: dot segments, percent-encoding, slashes, case, suffixes."""
    segments = base.strip("/").split("/")
    tricks = draw(st.lists(st.integers(0, 15), min_size=1, max_size=3))
    suffix = ""
    for trick in tricks:
        i = draw(st.integers(0, len(segments)))
        j = min(i, len(segments) - 1)
        if trick == 0:
            segments.insert(i, draw(st.sampled_from([".", "%2e", "%2E", "%252e", ".%2e", "%c0%ae"])))
        elif trick == 1:
            segments[i:i] = [draw(st.sampled_from(["x", "v1", "proxy", "%78", "signature"])), ".."]
        elif trick == 2:
            segments.insert(i, draw(st.sampled_from(["..", "%2e%2e", "%2E.", "..;", "...", ".. "])))
        elif trick == 3:  # percent-encode one character of a segment (letters, dots, slashes alike)
            seg = segments[j]
            if seg:
                k = draw(st.integers(0, len(seg) - 1))
                segments[j] = seg[:k] + _pct(seg[k], draw(st.booleans())) + seg[k + 1 :]
        elif trick == 4:
            suffix += "/"
        elif trick == 5:
            segments.insert(i, "")  # a double slash
        elif trick == 6 and j + 1 < len(segments):
            joined = draw(st.sampled_from(["%2F", "%2f", "\\", "%5C", "%252F", "/./", "//"]))
            segments[j : j + 2] = [segments[j] + joined + segments[j + 1]]
        elif trick == 7:
            segments[j] += draw(st.sampled_from([";", ";x=1", ";jsessionid=1", "%3B"]))
        elif trick == 8:
            segments[j] = draw(st.sampled_from([str.upper, str.title, str.swapcase]))(segments[j])
        elif trick == 9:
            suffix += draw(st.sampled_from(["%3F", "%3Fx=1", "%23", "%23frag", "%00", "%20", "%09", "%0a"]))
        elif trick == 10:
            suffix += draw(st.sampled_from(["?", "?x=1", "?stream=true", "#", "#frag", "?a=%2e%2e"]))
        elif trick == 11:
            segments[j] = segments[j].replace("o", "%6f").replace("c", "%63")
        elif trick == 12:
            segments[j] = draw(st.sampled_from(["．", "。", "%ef%bc%8e", "%u002e", "ｃｈａｔ"])) + segments[j]
        elif trick == 13:
            segments[j] += draw(st.sampled_from(["%2F", "%2f", "/", "/.", "/..", "%2F.."]))
        elif trick == 14:
            segments.insert(i, draw(st.sampled_from(["v1", "proxy", "health", "metrics", "admin"])))
        else:
            suffix += draw(st.sampled_from(["/.", "/..", "/%2e", "/x/..", "%20HTTP/1.1"]))
    return "/" + "/".join(segments) + suffix


def canonical_targets(signature_id: str) -> set[str]:
    return {*BILLED, *ANONYMOUS[:2], ANONYMOUS[2].format(id=signature_id)}


def path_part(target: str) -> str:
    """The path of a request target: what the broker sees once the query and fragment are cut."""
    for sep in ("?", "#"):
        target = target.split(sep, 1)[0]
    return target
