"""The output cap: every field a backend honours, the smaller length wins, choices multiply."""

from __future__ import annotations

from typing import Any

import pytest

from zgserve.common.errors import BadRequest
from zgserve.common.output_cap import OutputCap, output_cap, with_cap


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({}, OutputCap(4096, 1)),
        ({"max_tokens": 7}, OutputCap(7, 1)),
        # The overdraft: llama.cpp honours max_tokens, vLLM max_completion_tokens; the smaller counts.
        ({"max_completion_tokens": 1, "max_tokens": 400}, OutputCap(1, 1)),
        ({"max_completion_tokens": 400, "max_tokens": 1}, OutputCap(1, 1)),
        ({"max_tokens": None}, OutputCap(4096, 1)),
        ({"max_tokens": 10**9}, OutputCap(4096, 1)),
        ({"max_tokens": 5, "n": 3}, OutputCap(5, 3)),
        ({"max_tokens": 5, "n": 2, "best_of": 4}, OutputCap(5, 4)),
    ],
)
def test_cap(request_: dict[str, Any], expected: OutputCap) -> None:
    assert output_cap(request_, 4096) == expected


def test_total_is_the_reservation() -> None:
    assert output_cap({"max_tokens": 5, "n": 3}, 4096).total == 15


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"max_tokens": 1e30}, "max_tokens"),
        ({"max_tokens": 7.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": "7"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"best_of": 1000}, "best_of"),
        ({"n_predict": 400}, "n_predict"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"min_tokens": 10}, "min_tokens"),
    ],
)
def test_refused(request_: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        output_cap(request_, 4096)
    assert info.value.status == 400
    assert info.value.param == param


def test_backend_is_told_the_cap_in_both_fields() -> None:
    request = {"max_completion_tokens": 1, "max_tokens": 400, "model": "m"}
    told = with_cap(request, output_cap(request, 4096))
    assert told == {"max_completion_tokens": 1, "max_tokens": 1, "model": "m"}
    assert request["max_tokens"] == 400  # the client's request is left as it was
    assert with_cap({}, OutputCap(8, 1)) == {"max_tokens": 8}
