"""Media request fields read into one canonical value: numbers only as plain ASCII decimals."""

from __future__ import annotations

import json

import pytest

from zgserve.common import media
from zgserve.common.errors import BadRequest


@pytest.mark.parametrize("speed", ["١", "１", " 1", "1e0", "nan", "inf", "0x1", "1_0", True, 5, 0.1])
def test_speech_speed_in_any_other_form_is_refused(speed: object) -> None:
    body = json.dumps({"model": "voice", "input": "hello", "speed": speed}).encode()
    with pytest.raises(BadRequest, match="speed"):
        media.speech_request(body)


@pytest.mark.parametrize(("speed", "read"), [("1.5", 1.5), ("2", 2.0), (0.5, 0.5), (None, 1.0)])
def test_speech_speed(speed: object, read: float) -> None:
    body = json.dumps({"model": "voice", "input": "hello", "speed": speed}).encode()
    assert media.speech_request(body).speed == read
