"""Reading a request body within its size bound, for the raw ASGI endpoints of the broker and the
service: one reader, so both refuse the same bodies the same way."""

from __future__ import annotations

from starlette.types import Receive, Scope

from zgserve.common.errors import BadRequest, PayloadTooLarge
from zgserve.common.headers import parse_count


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``limit`` bytes."""
    length = header(scope, b"content-length")
    if length is not None:
        declared = parse_count(length)
        if declared is None:
            raise BadRequest("Content-Length is not a number")
        if declared > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
