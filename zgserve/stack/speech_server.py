"""A small real text-to-speech backend: OpenAI's ``POST /v1/audio/speech`` over ``espeak-ng``.

``zgserve up --speech`` runs it (``python -m zgserve.stack.speech_server --port P``) behind
a verifiable service of its own, so that a local network sells real speech: WAV audio
that the broker measures and bills per second. ``espeak-ng`` (Debian package of the same
name) synthesises it; the text goes through its stdin, never through a command line.

* ``input``: 1 to 4096 characters (OpenAI's limit); ``speed`` 0.25 to 4.0 maps to words
  per minute (175 at 1.0, within espeak-ng's 80 to 450); ``response_format`` ``wav`` only;
  ``voice`` is accepted and ignored (espeak-ng has one default voice here).
* Errors in the OpenAI shape: 400 for a bad request, 503 when espeak-ng fails or is busy
  for too long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODEL_ID = "espeak-ng"
MAX_INPUT_CHARS = 4096
MAX_BODY_BYTES = 64 * 1024
WORDS_PER_MINUTE = 175
MIN_WPM, MAX_WPM = 80, 450
SYNTHESIS_TIMEOUT_S = 60.0
CONCURRENT_SYNTHESES = 4


class SpeechError(Exception):
    """A request this server refuses or cannot answer, with its HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


def error_response(exc: SpeechError) -> JSONResponse:
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    body = {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": None}}
    return JSONResponse(body, status_code=exc.status)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech_params(payload: Any) -> tuple[str, float]:
    """``(text, speed)`` of an OpenAI speech request; raises :class:`SpeechError` when it is not one."""
    if not isinstance(payload, dict):
        raise SpeechError("expected a JSON object")
    text = payload.get("input")
    if not isinstance(text, str) or not text.strip():
        raise SpeechError("'input' must be a non-empty string", param="input")
    if len(text) > MAX_INPUT_CHARS:
        raise SpeechError(f"'input' is longer than {MAX_INPUT_CHARS} characters", param="input")
    speed = payload.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        raise SpeechError("'speed' must be a number from 0.25 to 4.0", param="speed")
    if payload.get("response_format", "wav") != "wav":
        raise SpeechError("this backend writes wav only", param="response_format")
    return text, float(speed)


async def synthesize(text: str, speed: float = 1.0, *, timeout_s: float = SYNTHESIS_TIMEOUT_S) -> bytes:
    """WAV audio of ``text`` spoken by espeak-ng; raises :class:`SpeechError` (503) if it fails."""
    wpm = min(MAX_WPM, max(MIN_WPM, round(WORDS_PER_MINUTE * speed)))
    try:
        proc = await asyncio.create_subprocess_exec(
            "espeak-ng", "--stdin", "--stdout", "-s", str(wpm),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except OSError as exc:
        raise SpeechError(f"espeak-ng cannot run: {exc.strerror}", 503) from None
    try:
        audio, _ = await asyncio.wait_for(proc.communicate(text.encode()), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise SpeechError("espeak-ng took too long", 503) from None
    if proc.returncode != 0 or not audio:
        raise SpeechError(f"espeak-ng failed (status {proc.returncode})", 503)
    return audio


async def speech_response(payload: Any, limit: asyncio.Semaphore | None = None) -> Response:
    """The answer to one speech request (``payload`` as parsed JSON): WAV, or an OpenAI error."""
    try:
        text, speed = speech_params(payload)
        async with limit or contextlib.nullcontext():
            audio = await synthesize(text, speed)
    except SpeechError as exc:
        return error_response(exc)
    return Response(audio, media_type="audio/wav")


def create_app(model: str = MODEL_ID, *, concurrency: int = CONCURRENT_SYNTHESES) -> Starlette:
    """The speech server; at most ``concurrency`` espeak-ng processes run at once."""
    limit = asyncio.Semaphore(concurrency)

    async def speech(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error_response(SpeechError(f"the body is larger than {MAX_BODY_BYTES} bytes", 413))
        try:
            payload = json.loads(body)
        except ValueError:
            return error_response(SpeechError("the body is not JSON"))
        return await speech_response(payload, limit)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "me"}]})

    return Starlette(
        routes=[
            Route("/v1/audio/speech", speech, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="OpenAI /v1/audio/speech over espeak-ng")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--model", default=MODEL_ID, help="the model name /v1/models lists")
    args = parser.parse_args(argv)
    if not espeak_available():
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
