"""The OpenAPI description of the media routes (embeddings, images, audio), for :mod:`.openapi`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

_REF = "#/components/schemas/{model}"
_ERRORS = (400, 401, 402, 403, 404, 413, 429, 502, 503)
_SIZE = r"^([1-9][0-9]{1,4}x[1-9][0-9]{1,4}|auto)$"


class EmbeddingsRequest(BaseModel):
    """``POST /v1/proxy/embeddings``: billed for its prompt tokens."""

    input: str | list[str] | list[int] | list[list[int]] = Field(description="text(s) or token id list(s)")
    model: str | None = Field(default=None, max_length=256)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = Field(default=None, max_length=256)


class ImageGenerationRequest(BaseModel):
    """``POST /v1/proxy/images/generations``: billed per image returned, times the size's multiplier."""

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=8, description="capped by the provider's maxChoices")
    size: str | None = Field(default=None, pattern=_SIZE)
    quality: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    style: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    response_format: Literal["b64_json"] | None = None
    user: str | None = Field(default=None, max_length=256)


class SpeechRequest(BaseModel):
    """``POST /v1/proxy/audio/speech``: billed per second of the audio returned."""

    input: str = Field(min_length=1, max_length=4096)
    model: str | None = Field(default=None, max_length=256)
    voice: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    response_format: Literal["wav", "flac", "mp3", "opus"] | None = None
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=4096)


MEDIA_MODELS: tuple[type[BaseModel], ...] = (EmbeddingsRequest, ImageGenerationRequest, SpeechRequest)

_TEXT = {"type": "string", "maxLength": 4096}
_FILE = {"type": "string", "format": "binary"}


def _errors() -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Error"} for s in _ERRORS}


def _post(summary: str, content: str, schema: dict[str, Any], answer_type: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": "the signed answer",
        "content": {answer_type: {"schema": {"type": "object"} if answer_type.endswith("json") else _FILE}},
        "headers": {
            "ZG-Res-Key": {
                "description": "the answer's id (its signature's key)",
                "schema": {"type": "string"},
            },
            "X-0G-Fee": {"description": "the fee charged, neuron", "schema": {"type": "string"}},
        },
    }
    return {
        "post": {
            "summary": summary,
            "security": [{"appSk": []}],
            "requestBody": {"required": True, "content": {content: {"schema": schema}}},
            "responses": {"200": answer, **_errors()},
        }
    }


def _form(required: list[str], **fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": fields}


def media_paths() -> dict[str, Any]:
    json_type = "application/json"
    form_type = "multipart/form-data"
    return {
        "/v1/proxy/embeddings": _post(
            "Billed embeddings", json_type, {"$ref": _REF.format(model="EmbeddingsRequest")}, json_type
        ),
        "/v1/proxy/images/generations": _post(
            "Billed image generation",
            json_type,
            {"$ref": _REF.format(model="ImageGenerationRequest")},
            json_type,
        ),
        "/v1/proxy/images/edits": _post(
            "Billed image editing (an upload)",
            form_type,
            _form(
                ["image", "prompt"], image=_FILE, mask=_FILE, prompt=_TEXT, model=_TEXT, n=_TEXT, size=_TEXT
            ),
            json_type,
        ),
        "/v1/proxy/audio/transcriptions": _post(
            "Billed transcription, per second of the uploaded audio",
            form_type,
            _form(["file"], file=_FILE, model=_TEXT, language=_TEXT, prompt=_TEXT, response_format=_TEXT),
            json_type,
        ),
        "/v1/proxy/audio/speech": _post(
            "Billed speech, per second of the audio returned",
            json_type,
            {"$ref": _REF.format(model="SpeechRequest")},
            "audio/wav",
        ),
    }
