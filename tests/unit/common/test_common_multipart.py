"""Uploads read within bounds into one form, refused with a 400 and a stable code otherwise."""

from __future__ import annotations

import pytest

from zgserve.common import media, multipart
from zgserve.common.errors import BadRequest
from zgserve.common.multipart import FilePart

TEXT = frozenset({"model", "prompt"})
FILES = frozenset({"file"})


def _form(*parts: str, boundary: str = "b0undary") -> tuple[str, bytes]:
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    return f"multipart/form-data; boundary={boundary}", body.encode()


def test_a_form_round_trips_through_the_canonical_encoding() -> None:
    ct, body = multipart.encode(
        {"model": "m", "prompt": "ünïcode"}, {"file": FilePart(b"\x00--b\r\n", "a.wav")}
    )
    form = multipart.parse(body, ct, text_fields=TEXT, file_fields=FILES)
    assert form.fields == {"model": "m", "prompt": "ünïcode"}
    assert form.files["file"] == FilePart(b"\x00--b\r\n", "a.wav")


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        (None, b"", "invalid_multipart"),
        ("application/json", b"{}", "invalid_multipart"),
        ("multipart/form-data", b"", "invalid_multipart"),
        ("multipart/form-data; boundary=" + "x" * 71, b"", "invalid_multipart"),
        (*_form('Content-Disposition: form-data; name="evil"\r\n\r\nx'), "unsupported_parameter"),
        (
            *_form(
                'Content-Disposition: form-data; name="model"\r\n\r\nx',
                'Content-Disposition: form-data; name="model"\r\n\r\ny',
            ),
            "invalid_multipart",
        ),
        (
            *_form('Content-Disposition: form-data; name="model"; filename="a"\r\n\r\nx'),
            "unsupported_parameter",
        ),
        (*_form('Content-Disposition: form-data; name="file"\r\n\r\nx'), "invalid_multipart"),
        (*_form("Content-Type: text/plain\r\n\r\nx"), "invalid_multipart"),
        (*_form('Content-Disposition: form-data; name="prompt"\r\n\r\n' + "x" * 5000), "invalid_multipart"),
        (*_form(*['Content-Disposition: form-data; name="model"\r\n\r\nx'] * 17), "invalid_multipart"),
        (
            "multipart/form-data; boundary=b0undary",
            b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nx',
            "invalid_multipart",
        ),
        ("multipart/form-data; boundary=b0undary", b"garbage", "invalid_multipart"),
    ],
)
def test_malformed_or_unknown_parts_are_400s(content_type: str | None, body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        multipart.parse(body, content_type, text_fields=TEXT, file_fields=FILES)
    assert caught.value.code == code


def test_media_requests_check_every_field() -> None:
    assert media.embeddings_request(b'{"input": [[1, 2, 3]]}').chars == 3
    assert media.embeddings_request(b'{"input": [1, 2]}').chars == 2
    assert media.speech_request(b'{"input": "hello", "speed": 2}').speed == 2.0
    image = media.image_request(b'{"prompt": "p", "n": 2, "size": "64x64"}', max_images=4)
    assert (image.n, image.size) == (2, "64x64")
    for bad, call in [
        (b'{"input": ""}', media.embeddings_request),
        (b'{"input": [true]}', media.embeddings_request),
        (b'{"input": "x", "extra": 1}', media.embeddings_request),
        (b'{"input": "x", "speed": 9}', media.speech_request),
        (b'{"input": "x", "response_format": "pcm"}', media.speech_request),
        (b'{"prompt": "p", "n": 5}', lambda b: media.image_request(b, max_images=4)),
        (b'{"prompt": "p", "size": "big"}', lambda b: media.image_request(b, max_images=4)),
        (b'{"prompt": "p", "response_format": "url"}', lambda b: media.image_request(b, max_images=4)),
        (b"[]", media.embeddings_request),
    ]:
        with pytest.raises(BadRequest):
            call(bad)
