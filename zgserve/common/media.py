"""The requests of the non-chat routes, read once into typed values: embeddings, images, audio.

The broker reads them to bill (the input's size, the image count and size, the text to
speak, the uploaded audio) and the service reads them to forward; both call these
functions on the same bytes, so the two can never read a request differently. Every
field is known and checked here, or the request is refused (400 ``unsupported_parameter``
or ``invalid_parameter``); what is forwarded upstream is the checked value only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from zgserve.common import jsonsafe, multipart
from zgserve.common.errors import BadRequest
from zgserve.common.multipart import FilePart

MediaKind = Literal["embeddings", "images", "image_edits", "transcriptions", "speech"]

MAX_EMBEDDING_INPUTS = 2048
MAX_PROMPT_CHARS = 32_000
MAX_SPEECH_CHARS = 4096
_JSON_DEPTH = 8
_SIZE = re.compile(r"(?:[1-9][0-9]{1,4})x(?:[1-9][0-9]{1,4})|auto")
_WORD = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z]{2,4})?")


class UnsupportedParameter(BadRequest):
    code = "unsupported_parameter"


class InvalidParameter(BadRequest):
    code = "invalid_parameter"


def _text(value: Any, name: str, limit: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InvalidParameter(f"'{name}' is required", param=name)
        return None
    if not isinstance(value, str) or (required and not value):
        kind = "a non-empty string" if required else "a string"
        raise InvalidParameter(f"'{name}' must be {kind}", param=name)
    if len(value) > limit:
        raise InvalidParameter(f"'{name}' is over {limit} characters", param=name)
    return value


def _word(value: Any, name: str, allowed: tuple[str, ...] | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _WORD.fullmatch(value):
        raise InvalidParameter(f"'{name}' must be a short name", param=name)
    if allowed is not None and value not in allowed:
        raise InvalidParameter(f"'{name}' must be one of {', '.join(allowed)}", param=name)
    return value


def _int(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):  # multipart fields are text
        if not value.isascii() or not value.isdigit() or len(value) > 6:
            raise InvalidParameter(f"'{name}' must be an integer from {low} to {high}", param=name)
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidParameter(f"'{name}' must be an integer from {low} to {high}", param=name)
    return value


_DECIMAL = re.compile(r"[0-9]{1,8}(?:\.[0-9]{1,8})?")


def _number(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        # Plain decimals only: float() also reads spaces, exponents and other scripts' digits
        # ("١٫٥"), which a backend may read otherwise.
        value = float(value) if len(value) <= 16 and _DECIMAL.fullmatch(value) else math.nan
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidParameter(f"'{name}' must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _known(fields: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    for name in fields:
        if name not in allowed:
            raise UnsupportedParameter(f"'{name[:64]}' is not supported on this route", param=name[:64])
    return {k: v for k, v in fields.items() if v is not None}


def _object(body: bytes) -> dict[str, Any]:
    return jsonsafe.loads_object(body, max_depth=_JSON_DEPTH)


# ---- embeddings -------------------------------------------------------------------------------

_EMBEDDING_FIELDS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    payload: dict[str, Any]
    chars: int  # the text's length in characters (token arrays: their token count)
    token_lists: bool = False  # some input is a list of token ids, not text


def embeddings_request(body: bytes) -> EmbeddingsRequest:
    payload = _known(_object(body), _EMBEDDING_FIELDS)
    value = payload.get("input")
    items = value if isinstance(value, list) else [value]
    if value is None or (isinstance(value, list) and not value):
        raise InvalidParameter("'input' is required: a string, or strings or token lists", param="input")
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        items = [value]  # one token list
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise InvalidParameter(f"'input' has over {MAX_EMBEDDING_INPUTS} items", param="input")
    chars = 0
    token_lists = False
    for item in items:
        tokens = isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 1 << 31 for t in item
        )
        if (isinstance(item, str) or tokens) and item:
            chars += len(item)
            token_lists = token_lists or tokens
        else:
            raise InvalidParameter("'input' items must be non-empty strings or token lists", param="input")
    _text(payload.get("model"), "model", 256)
    _word(payload.get("encoding_format"), "encoding_format", ("float", "base64"))
    _int(payload.get("dimensions"), "dimensions", 1, 65_536)
    _text(payload.get("user"), "user", 256)
    return EmbeddingsRequest(payload, chars, token_lists)


# ---- images -----------------------------------------------------------------------------------

_IMAGE_FIELDS = frozenset({"prompt", "model", "n", "size", "quality", "style", "response_format", "user"})


@dataclass(frozen=True, slots=True)
class ImageRequest:
    fields: dict[str, Any]  # JSON values (generations) or text (edits), checked
    n: int
    size: str | None
    files: dict[str, FilePart]


def _image_fields(fields: dict[str, Any], max_images: int) -> tuple[int, str | None]:
    _text(fields.get("prompt"), "prompt", MAX_PROMPT_CHARS, required=True)
    _text(fields.get("model"), "model", 256)
    n = _int(fields.get("n"), "n", 1, max_images) or 1
    size = fields.get("size")
    if size is not None and (not isinstance(size, str) or not _SIZE.fullmatch(size)):
        raise InvalidParameter("'size' must be WIDTHxHEIGHT or auto", param="size")
    _word(fields.get("quality"), "quality")
    _word(fields.get("style"), "style")
    # The broker relays images as the backend gives them: inline base64 only.
    _word(fields.get("response_format"), "response_format", ("b64_json",))
    _text(fields.get("user"), "user", 256)
    return n, size


def image_request(body: bytes, *, max_images: int) -> ImageRequest:
    fields = _known(_object(body), _IMAGE_FIELDS)
    n, size = _image_fields(fields, max_images)
    return ImageRequest(fields, n, size, {})


def image_edit_request(body: bytes, content_type: str | bytes | None, *, max_images: int) -> ImageRequest:
    files = frozenset({"image", "mask"})
    form = multipart.parse(body, content_type, text_fields=_IMAGE_FIELDS, file_fields=files)
    fields: dict[str, Any] = dict(form.fields)
    if "image" not in form.files or not form.files["image"].data:
        raise InvalidParameter("'image' (a file) is required", param="image")
    n, size = _image_fields(fields, max_images)
    return ImageRequest(fields, n, size, dict(form.files))


# ---- audio ------------------------------------------------------------------------------------

_SPEECH_FIELDS = frozenset({"model", "input", "voice", "response_format", "speed", "instructions"})
SPEECH_FORMATS = ("wav", "flac", "mp3", "opus")


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    payload: dict[str, Any]
    chars: int
    speed: float


def speech_request(body: bytes) -> SpeechRequest:
    payload = _known(_object(body), _SPEECH_FIELDS)
    text = _text(payload.get("input"), "input", MAX_SPEECH_CHARS, required=True)
    assert text is not None
    _text(payload.get("model"), "model", 256)
    _word(payload.get("voice"), "voice")
    _word(payload.get("response_format"), "response_format", SPEECH_FORMATS)
    speed = _number(payload.get("speed"), "speed", 0.25, 4.0) or 1.0
    _text(payload.get("instructions"), "instructions", MAX_SPEECH_CHARS)
    return SpeechRequest(payload, len(text), speed)


_TRANSCRIPTION_FIELDS = frozenset({"model", "language", "prompt", "response_format", "temperature"})


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    fields: dict[str, str]
    audio: FilePart


def transcription_request(body: bytes, content_type: str | bytes | None) -> TranscriptionRequest:
    files = frozenset({"file"})
    form = multipart.parse(body, content_type, text_fields=_TRANSCRIPTION_FIELDS, file_fields=files)
    audio = form.files.get("file")
    if audio is None or not audio.data:
        raise InvalidParameter("'file' (the audio) is required", param="file")
    fields = form.fields
    _text(fields.get("model"), "model", 256)
    language = fields.get("language")
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise InvalidParameter("'language' must be an ISO-639 code", param="language")
    _text(fields.get("prompt"), "prompt", 2048)
    _word(fields.get("response_format"), "response_format", ("json", "text", "verbose_json"))
    _number(fields.get("temperature"), "temperature", 0.0, 1.0)
    return TranscriptionRequest(dict(fields), audio)
