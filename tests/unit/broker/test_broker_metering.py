"""Usage and ids from whole responses and from SSE streams split anywhere."""

from __future__ import annotations

import json

from zgserve.broker.metering import StreamMeter, Usage, read_json_response


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


STREAM = (
    event({"id": "chatcmpl-1", "choices": [{"delta": {"role": "assistant"}}]})
    + event({"id": "chatcmpl-1", "choices": [{"delta": {"content": "Hel"}}]})
    + event({"id": "chatcmpl-1", "choices": [{"delta": {"content": "lo"}}]})
    + event({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}})
    + b"data: [DONE]\n\n"
)


def test_whole_response() -> None:
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    assert read_json_response(body) == (Usage(3, 4), "x")
    assert read_json_response(b"not json") == (None, None)
    assert read_json_response(b'{"id": 5, "usage": {"prompt_tokens": -1}}') == (None, None)


def test_stream_in_every_split() -> None:
    for size in (1, 2, 7, 64, len(STREAM)):
        meter = StreamMeter()
        content = sum(meter.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size))
        assert content == 2
        assert meter.content_events == 2
        assert meter.usage == Usage(11, 2)
        assert meter.response_id == "chatcmpl-1"
        assert meter.done
        assert not meter.errored


def test_error_event() -> None:
    meter = StreamMeter()
    meter.feed(event({"error": {"message": "upstream died"}}) + b"data: [DONE]\n\n")
    assert meter.errored
    assert meter.done
    assert meter.usage is None


def test_fast_path_agrees_with_json() -> None:
    events = [
        {"id": "a", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"id": "a", "choices": [{"delta": {"content": 'say \\"content\\": \\"x\\"'}}]},
        {"id": "a", "choices": [{"delta": {"content": None}}]},
        {"id": "a", "choices": [{"delta": {"reasoning_content": "hmm"}}]},
        {"id": "a", "choices": [{"text": "legacy", "index": 0}]},
        {"id": "a", "choices": [{"delta": {}, "finish_reason": "stop"}]},
    ]
    for compact in (True, False):
        sep = (",", ":") if compact else (", ", ": ")
        meter = StreamMeter()
        body = b"".join(b"data: " + json.dumps(e, separators=sep).encode() + b"\n\n" for e in events)
        assert meter.feed(body) == 3


def test_a_half_sent_event_with_text_is_known_as_delivered_text() -> None:
    meter = StreamMeter()
    first = b'data: {"id":"c1","choices":[{"delta":{"role":"assistant"}}]}\n\n'
    assert meter.feed(first) == 0
    assert not meter.partial_content()
    # The stream is cut inside the next event: its text has left, its end has not.
    assert meter.feed(b'data: {"id":"c1","choices":[{"delta":{"content":"Hel') == 0
    assert meter.partial_content()
    assert meter.feed(b'lo"}}]}\n\n') == 1  # completed later: counted once, as one event
    assert not meter.partial_content()
    assert meter.feed(b'data: {"id":"c1","choices":[{"delta":{') == 0
    assert not meter.partial_content()  # no text yet
