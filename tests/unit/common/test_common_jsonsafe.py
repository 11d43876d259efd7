"""Bounded JSON parsing: depth, size, encoding, constants and duplicate keys are client errors."""

from __future__ import annotations

import json
import sys

import pytest

from zgserve.common import jsonsafe
from zgserve.common.errors import BadRequest, PayloadTooLarge


def test_parses_ordinary_json() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hé [{"}], "n": 1}
    assert jsonsafe.loads(json.dumps(body).encode()) == body
    assert jsonsafe.loads_object(json.dumps(body, ensure_ascii=False)) == body


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_depth_bomb_refused_before_parsing(depth: int) -> None:
    # With py_ecc's raised recursion limit, json.loads itself would overflow the C stack here.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200_000)
    try:
        with pytest.raises(jsonsafe.JsonTooDeep):
            jsonsafe.loads(b"[" * depth + b"]" * depth)
        with pytest.raises(jsonsafe.JsonTooDeep):
            jsonsafe.loads(b'{"a":' * depth + b"1" + b"}" * depth)
    finally:
        sys.setrecursionlimit(old)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[" * 10_000, "b": '\\"{' * 5_000})
    assert jsonsafe.loads(text)["a"] == "[" * 10_000


def test_depth_at_the_limit_is_accepted() -> None:
    assert jsonsafe.loads(b"[" * 64 + b"]" * 64, max_depth=64) is not None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1, "a": 2}',
        '{"a": "x"}'.encode("utf-16"),
        '{"a": "x"}'.encode("utf-32"),
        b'{"a": "\xff"}',
        b'{"n": ' + b"9" * 5000 + b"}",
    ],
)
def test_invalid(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        jsonsafe.loads(body)
    assert info.value.status == 400
    assert info.value.code == "invalid_json"


def test_size_and_shape() -> None:
    with pytest.raises(PayloadTooLarge):
        jsonsafe.loads(b"[1]" + b" " * 100, max_bytes=50)
    with pytest.raises(BadRequest):
        jsonsafe.loads_object(b"[1]")
