"""Server-sent events at the byte level.

The proxy forwards SSE bodies byte for byte, so the parser keeps the exact bytes
of every event (``raw``) next to its decoded ``data``. It accepts events split
across reads and several events in one read, the three line endings of the SSE
grammar (LF, CRLF, CR), comments, and ``data:`` with or without the one optional
space: the field name is removed as a prefix, never with ``str.strip``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DONE = b"[DONE]"
_LINE_END = re.compile(rb"\r\n|\n|\r")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs several times more per event
class SSEEvent:
    """One complete event: its exact bytes (blank-line terminator included) and its fields."""

    raw: bytes
    data: bytes | None
    event: str | None = None

    @property
    def is_done(self) -> bool:
        data = self.data
        return data is not None and DONE in data and data.strip() == DONE


def _parse_fields(raw: bytes) -> tuple[bytes | None, str | None]:
    data_parts: list[bytes] = []
    has_data = False
    event_name: str | None = None
    for line in _LINE_END.split(raw):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            has_data = True
            data_parts.append(value)
        elif name == b"event":
            event_name = value.decode("utf-8", "replace")
    return (b"\n".join(data_parts) if has_data else None), event_name


class SSEParser:
    """Incremental SSE parser: ``feed`` bytes, get the events completed by them."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            events, rest = self._split_general(buf)
        else:
            events, rest = self._split_lf(buf)
        self._buf = rest
        return events

    def pending(self) -> bytes:
        """Bytes received that do not yet form a complete event."""
        return self._buf

    def close(self) -> SSEEvent | None:
        """At end of stream: the unterminated last event, if any (its raw bytes as received)."""
        buf, self._buf = self._buf, b""
        if not buf:
            return None
        data, event_name = _parse_fields(buf)
        return SSEEvent(buf, data, event_name)

    @staticmethod
    def _split_lf(buf: bytes) -> tuple[list[SSEEvent], bytes]:
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                return events, buf[start:]
            raw = buf[start : end + 2]
            if raw.startswith(b"data: ") and raw.count(b"\n") == 2:
                # The common case, one ``data: ...`` line: no field loop needed.
                events.append(SSEEvent(raw, raw[6:-2]))
            else:
                data, event_name = _parse_fields(raw)
                events.append(SSEEvent(raw, data, event_name))
            start = end + 2

    @staticmethod
    def _split_general(buf: bytes) -> tuple[list[SSEEvent], bytes]:
        events: list[SSEEvent] = []
        event_start = 0
        line_start = 0
        for match in _LINE_END.finditer(buf):
            if match.group() == b"\r" and match.end() == len(buf):
                break  # a CR at the end may be the first half of CRLF: wait for more bytes
            if match.start() == line_start and line_start > event_start:
                raw = buf[event_start : match.end()]
                data, event_name = _parse_fields(raw)
                events.append(SSEEvent(raw, data, event_name))
                event_start = match.end()
            elif match.start() == line_start == event_start:
                # A blank line with no event before it: part of the next event's bytes.
                pass
            line_start = match.end()
        return events, buf[event_start:]


def encode_event(data: bytes) -> bytes:
    """One ``data:`` event; ``data`` must not contain line breaks (compact JSON never does)."""
    return b"data: " + data + b"\n\n"


DONE_EVENT = encode_event(DONE)
