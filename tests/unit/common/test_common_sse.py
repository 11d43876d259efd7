"""Byte-level SSE: exact bytes kept, events split across reads and packed into one read."""

from __future__ import annotations

import random

import pytest

from zgserve.common.sse import DONE_EVENT, SSEEvent, SSEParser, encode_event

STREAM = (
    b'data: {"id":"c1","choices":[{"delta":{"content":"h\xc3\xa9"}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"id":"c1","choices":[{"delta":{"content":"llo"}}]}\n\n'
    b"event: note\ndata: line one\ndata: line two\n\n"
    b"data: [DONE]\n\n"
)


def feed_all(parser: SSEParser, pieces: list[bytes]) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


def test_one_read_many_events() -> None:
    events = SSEParser().feed(STREAM)
    assert b"".join(e.raw for e in events) == STREAM
    assert [e.data for e in events] == [
        b'{"id":"c1","choices":[{"delta":{"content":"h\xc3\xa9"}}]}',
        None,
        b'{"id":"c1","choices":[{"delta":{"content":"llo"}}]}',
        b"line one\nline two",
        b"[DONE]",
    ]
    assert events[3].event == "note"
    assert events[-1].is_done
    assert not events[0].is_done


def test_every_split_point_gives_the_same_events() -> None:
    whole = SSEParser().feed(STREAM)
    for cut in range(1, len(STREAM)):
        parser = SSEParser()
        events = feed_all(parser, [STREAM[:cut], STREAM[cut:]])
        assert events == whole, cut
        assert parser.pending() == b""


def test_byte_by_byte_and_random_chunking() -> None:
    whole = SSEParser().feed(STREAM)
    assert feed_all(SSEParser(), [bytes([b]) for b in STREAM]) == whole
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert feed_all(SSEParser(), pieces) == whole


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_line_endings(newline: bytes) -> None:
    stream = b"data: a" + newline + newline + b"data:b" + newline + b"data:  c" + newline + newline
    for cut in range(1, len(stream)):
        parser = SSEParser()
        events = feed_all(parser, [stream[:cut], stream[cut:]])
        tail = parser.close()  # a lone CR at the very end stays pending until the stream ends
        events += [tail] if tail is not None else []
        assert [e.data for e in events] == [b"a", b"b\n c"], cut
        assert b"".join(e.raw for e in events) == stream


def test_cr_at_end_of_read_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []
    events = parser.feed(b"\ndata: y\r\n\r\n")
    assert [e.data for e in events] == [b"x", b"y"]
    assert b"".join(e.raw for e in events) == b"data: x\r\n\r\ndata: y\r\n\r\n"


def test_data_is_a_field_name_not_a_character_set() -> None:
    # ``str.strip("data: ")`` would eat the leading "a", "t" and ":" of these values.
    events = SSEParser().feed(b"data: at: data\n\ndata:data\n\ndatum: no\n\n")
    assert [e.data for e in events] == [b"at: data", b"data", None]


def test_unterminated_tail_is_returned_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: partial") == [SSEEvent(b"data: 1\n\n", b"1")]
    tail = parser.close()
    assert tail is not None
    assert tail.raw == b"data: partial"
    assert tail.data == b"partial"
    assert parser.close() is None


def test_encode() -> None:
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE_EVENT == b"data: [DONE]\n\n"
    assert SSEParser().feed(DONE_EVENT)[0].is_done
