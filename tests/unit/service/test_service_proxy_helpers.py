"""Request parsing and the usage request added to streams, without a server."""

from __future__ import annotations

import json

import pytest

from zgserve.common.errors import BadRequest
from zgserve.service.proxy import parse_request, with_usage_requested


def test_usage_requested_by_inserting_bytes_when_absent() -> None:
    body = b' {"model": "m", "stream": true, "messages": []}'
    sent = with_usage_requested(body, parse_request(body))
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    assert sent.endswith(body[2:])  # the client's bytes follow unchanged


def test_usage_request_merges_with_client_options() -> None:
    keep = b'{"stream": true, "stream_options": {"include_usage": true}}'
    assert with_usage_requested(keep, parse_request(keep)) is keep
    off = b'{"stream": true, "stream_options": {"include_usage": false, "x": 1}}'
    assert json.loads(with_usage_requested(off, parse_request(off)))["stream_options"] == {
        "include_usage": True,
        "x": 1,
    }
    null = b'{"stream": true, "stream_options": null}'
    assert json.loads(with_usage_requested(null, parse_request(null)))["stream_options"] == {
        "include_usage": True
    }


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"stream": "yes"}'])
def test_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(body)
