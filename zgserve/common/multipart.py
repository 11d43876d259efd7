"""``multipart/form-data`` bodies, read within bounds into one typed form and written back canonically.

The broker and the service read an upload with this one function, so both see the same
fields: the broker to bill (the audio's duration, the image count), the service to
forward. What the backend gets is :func:`encode` of the form that was read (known fields
only, one boundary of ours, fixed part headers), never the client's bytes, which are
only hashed and signed.

Bounds, checked before or while the parser runs: the body size (the caller's), at most
``max_parts`` parts, a field name from the route's allow-list, each field used once, a
text field at most ``max_field_bytes`` of UTF-8, a file part only where the route takes
a file. Anything else is a 400 with a stable code, never a parser exception.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from zgserve.common.errors import BadRequest

MAX_PARTS = 16
MAX_FIELD_BYTES = 4096
_MAX_HEADER_BYTES = 1024
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{1,70}")
_NAME = re.compile(r"[a-z][a-z0-9_\[\]]{0,63}")
_FILENAME_CHARS = 255
_MEDIA_TYPE = re.compile(rb"[a-z0-9.+\-]{1,64}/[a-z0-9.+\-]{1,64}")


class InvalidMultipart(BadRequest):
    code = "invalid_multipart"


class UnsupportedField(BadRequest):
    code = "unsupported_parameter"


@dataclass(frozen=True, slots=True)
class FilePart:
    """An uploaded file: its bytes and what the client called it."""

    data: bytes
    filename: str
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Form:
    """A form as read: text fields and files by field name, in the order they came."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)


def boundary_of(content_type: str | bytes | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; 400 when it is anything else."""
    if content_type is None:
        raise InvalidMultipart("this route takes multipart/form-data (no Content-Type was sent)")
    raw = content_type.encode("latin-1") if isinstance(content_type, str) else content_type
    if len(raw) > 256:
        raise InvalidMultipart("the Content-Type header is too long")
    kind, options = parse_options_header(raw)
    if kind != b"multipart/form-data":
        raise InvalidMultipart("this route takes multipart/form-data")
    boundary = options.get(b"boundary")
    if boundary is None or not _BOUNDARY.fullmatch(boundary) or boundary.endswith(b" "):
        raise InvalidMultipart("the multipart boundary is missing or malformed")
    return boundary


class _Collector:
    """Parser callbacks that build a :class:`Form`, refusing what is out of bounds."""

    def __init__(self, text_fields: frozenset[str], file_fields: frozenset[str], max_parts: int) -> None:
        self.text_fields = text_fields
        self.file_fields = file_fields
        self.max_parts = max_parts
        self.parts = 0
        self.form = Form()
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data: list[bytes] = []
        self._size = 0
        self._name = ""
        self._filename: str | None = None
        self._type = "application/octet-stream"

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise InvalidMultipart(f"more than {self.max_parts} parts")
        self._headers, self._data, self._size = {}, [], 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        if len(self._header_name) > _MAX_HEADER_BYTES:
            raise InvalidMultipart("a part header is too long")

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > _MAX_HEADER_BYTES:
            raise InvalidMultipart("a part header is too long")

    def header_end(self) -> None:
        name = self._header_name.strip().lower()
        if name in self._headers:
            raise InvalidMultipart(f"a part repeats its {name.decode('latin-1')!r} header")
        self._headers[name] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise InvalidMultipart("a part has no Content-Disposition header")
        kind, options = parse_options_header(disposition)
        raw_name = options.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise InvalidMultipart("a part is not a named form-data field")
        name = raw_name.decode("latin-1")
        if not _NAME.fullmatch(name):
            raise UnsupportedField("a field name is not one this route knows", param=name[:64])
        if name in self.form.fields or name in self.form.files:
            raise InvalidMultipart(f"field {name!r} is given more than once", param=name)
        raw_filename = options.get(b"filename")
        if raw_filename is not None:
            if name not in self.file_fields:
                raise UnsupportedField(f"field {name!r} does not take a file", param=name)
            try:
                filename = raw_filename.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidMultipart("a file name is not UTF-8", param=name) from None
            self._filename = "".join(c for c in filename if c.isprintable())[:_FILENAME_CHARS] or "file"
            part_type = self._headers.get(b"content-type", b"application/octet-stream")
            media, _ = parse_options_header(part_type)
            known = _MEDIA_TYPE.fullmatch(media) is not None
            self._type = media.decode("latin-1") if known else "application/octet-stream"
        else:
            if name not in self.text_fields:
                if name in self.file_fields:
                    raise InvalidMultipart(f"field {name!r} must be a file upload", param=name)
                raise UnsupportedField(f"field {name!r} is not supported on this route", param=name)
            self._filename = None
        self._name = name

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._filename is None and self._size > MAX_FIELD_BYTES:
            raise InvalidMultipart(f"field {self._name!r} is over {MAX_FIELD_BYTES} bytes", param=self._name)
        self._data.append(data[start:end])

    def part_end(self) -> None:
        data = b"".join(self._data)
        if self._filename is not None:
            self.form.files[self._name] = FilePart(data, self._filename, self._type)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidMultipart(f"field {self._name!r} is not UTF-8", param=self._name) from None
            self.form.fields[self._name] = text
        self._data = []

    def end(self) -> None:
        self.ended = True


def parse(
    body: bytes,
    content_type: str | bytes | None,
    *,
    text_fields: frozenset[str],
    file_fields: frozenset[str],
    max_parts: int = MAX_PARTS,
) -> Form:
    """The form in ``body`` (already bounded in size by the caller); 400 on anything malformed."""
    boundary = boundary_of(content_type)
    collector = _Collector(text_fields, file_fields, max_parts)
    callbacks = {
        "on_part_begin": collector.part_begin,
        "on_header_field": collector.header_field,
        "on_header_value": collector.header_value,
        "on_header_end": collector.header_end,
        "on_headers_finished": collector.headers_finished,
        "on_part_data": collector.part_data,
        "on_part_end": collector.part_end,
        "on_end": collector.end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidMultipart(f"the multipart body is malformed ({str(exc)[:120]})") from None
    if not collector.ended:
        raise InvalidMultipart("the multipart body is cut off (no closing boundary)")
    return collector.form


def encode(fields: Mapping[str, str], files: Mapping[str, FilePart]) -> tuple[str, bytes]:
    """``(content type, body)``: one canonical multipart body of these fields and files."""
    boundary = "zg" + uuid.uuid4().hex
    marker = boundary.encode("ascii")
    out: list[bytes] = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.append(value.encode("utf-8") + b"\r\n")
    for name, part in files.items():
        filename = part.filename.replace("\\", "_").replace('"', "_")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {part.content_type}\r\n\r\n"
        )
        out.append(head.encode("utf-8"))
        out.append(part.data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    body = b"".join(out)
    if body.count(marker) != len(fields) + len(files) + 1:  # a 128-bit random boundary inside the data
        return encode(fields, files)
    return f"multipart/form-data; boundary={boundary}", body
