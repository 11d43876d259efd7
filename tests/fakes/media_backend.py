"""A small real backend for the media routes: real speech, stand-ins for images and transcription.

* ``POST /v1/audio/speech``: real text-to-speech with Debian's ``espeak-ng``, as the
  package's own speech server answers it (:mod:`zgserve.stack.speech_server`). Voice
  ``broken`` answers bytes that are not audio (a backend fault the broker must not bill).
* ``POST /v1/audio/transcriptions`` (stand-in: no speech recognizer runs here): a JSON
  ``{"text"}`` naming the upload's size, or ``text/plain`` for ``response_format=text``.
* ``POST /v1/images/generations`` and ``/v1/images/edits`` (stand-in: no image model runs
  here): ``n`` real PNGs (written with zlib), ``b64_json``. A prompt containing ``fewer``
  gets one image less than asked; ``status:NNN`` answers that error.

``backend.requests`` keeps ``(path, content type, body)`` of what it was sent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.asgi import serve
from zgserve.stack.speech_server import espeak_available, speech_response


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A real RGB PNG of a gradient (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 7 + seed) % 256, y * 5 % 256, (x + y) % 256))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


class MediaBackend:
    """``async with MediaBackend() as backend: backend.url`` -> http://127.0.0.1:<port>."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, str, bytes]] = []
        self._served: contextlib.AbstractAsyncContextManager[str] | None = None

    async def _keep(self, request: Request) -> bytes:
        body = await request.body()
        self.requests.append((request.url.path, request.headers.get("content-type", ""), body))
        return body

    async def speech(self, request: Request) -> Response:
        payload = json.loads(await self._keep(request))
        if payload.get("voice") == "broken":
            return Response(b"this is not audio at all", media_type="audio/wav")
        return await speech_response(payload)

    async def transcriptions(self, request: Request) -> Response:
        await self._keep(request)
        async with request.form() as form:
            upload: Any = form.get("file")
            if upload is None or isinstance(upload, str):
                return _error("'file' is required")
            size = len(await upload.read())
            text = f"stand-in transcript of {size} bytes"
            if form.get("response_format") == "text":
                return Response(text, media_type="text/plain")
        return JSONResponse({"text": text})

    async def images(self, request: Request) -> Response:
        body = await self._keep(request)
        if request.url.path.endswith("/edits"):
            async with request.form() as form:
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                if not hasattr(form.get("image"), "read"):
                    return _error("'image' is required")
        else:
            fields = json.loads(body)
        prompt = str(fields.get("prompt", ""))
        status = re.search(r"status:(\d{3})", prompt)
        if status:
            return _error("asked to fail", int(status.group(1)))
        n = int(fields.get("n", 1))
        if "fewer" in prompt:
            n -= 1
        data = [{"b64_json": base64.b64encode(png(8, 8, i)).decode()} for i in range(n)]
        return JSONResponse({"created": 1, "data": data})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/audio/speech", self.speech, methods=["POST"]),
                Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
                Route("/v1/images/generations", self.images, methods=["POST"]),
                Route("/v1/images/edits", self.images, methods=["POST"]),
            ]
        )

    async def __aenter__(self) -> MediaBackend:
        if not espeak_available():
            raise RuntimeError("espeak-ng is not installed (scripts/install.sh installs it)")
        self._served = serve(self.app())
        self.url = await self._served.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._served is not None
        await self._served.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def media_backend() -> AsyncIterator[MediaBackend]:
    async with MediaBackend() as backend:
        yield backend
