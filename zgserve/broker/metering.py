"""What a response used, read from the service's signed bytes.

Non-streamed: ``usage`` and ``id`` of the JSON body. Streamed: the SSE events are
parsed at byte level as they pass; the ``id`` of the first event names the
response, the last ``usage`` seen (the service sends one chunk with it before
``[DONE]``) gives the tokens.

Rule for a client that leaves mid-stream: it pays the prompt (from a ``usage``
seen so far, else a low estimate of text length / 4) and one output token per
content-bearing event that was handed to the connection before the disconnect
was noticed (capped by a reported ``completion_tokens``). Streams that end with an
error event from the service are not charged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from zgserve.common.sse import SSEParser


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of the prompt (``prompt_tokens_details.cached_tokens``), for cache billing


def _usage(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and not isinstance(cached, bool) and cached > 0 else 0
    return Usage(prompt, completion, min(cached, prompt))


def read_json_response(body: bytes) -> tuple[Usage | None, str | None]:
    """``(usage, id)`` of a non-streamed completion; ``(None, None)`` if the body is not JSON."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None, None
    response_id = obj.get("id") if isinstance(obj, dict) else None
    return _usage(obj), response_id if isinstance(response_id, str) else None


def _has_content(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
            return True
        if choice.get("text"):  # legacy /completions stream
            return True
    return False


# A non-empty content string in a delta (or a legacy completions ``text``). Quotes inside JSON
# strings are escaped, so generated text cannot fake a key here.
_CONTENT = re.compile(rb'"(?:reasoning_content|content|text)"\s*:\s*"(?!")')


class StreamMeter:
    """Follows an SSE response: id, usage, content events, ``[DONE]`` and errors."""

    __slots__ = ("_parser", "content_events", "done", "errored", "response_id", "usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.response_id: str | None = None
        self.usage: Usage | None = None
        self.content_events = 0
        self.done = False
        self.errored = False

    def feed(self, chunk: bytes) -> int:
        """Account for ``chunk``; returns the number of content-bearing events it completed."""
        content = 0
        for event in self._parser.feed(chunk):
            data = event.data
            if data is None:
                continue
            if event.is_done:
                self.done = True
                continue
            if self.response_id is not None and b'"usage"' not in data and b'"error"' not in data:
                # A plain delta (most events): a byte-level look is enough, no JSON parse.
                if _CONTENT.search(data):
                    content += 1
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if "error" in obj and "choices" not in obj:
                self.errored = True
                continue
            if self.response_id is None and isinstance(obj.get("id"), str):
                self.response_id = obj["id"]
            usage = _usage(obj)
            if usage is not None:
                self.usage = usage
            if _has_content(obj):
                content += 1
        self.content_events += content
        return content

    def partial_content(self) -> bool:
        """Whether the bytes of an event not yet complete already carry generated text: once
        they have left, the client has that text even if the stream ends before the event does."""
        pending = self._parser.pending()
        return bool(pending) and _CONTENT.search(pending) is not None
