"""Embeddings, images and audio: forwarded in canonical form, answered whole, signed like chat.

Signed text = ``sha256(request bytes as the client sent them)`` ":" ``sha256(response bytes
as sent)``, the same text as for chat (:func:`zgserve.common.signing.signed_text`). For a
multipart upload the request bytes are the whole body as received, boundaries included.
The backend gets the request as read by :mod:`zgserve.common.media` (known fields only,
re-serialised; uploads re-encoded with a boundary of ours). These answers carry no id
the client could use, so the service names each one (``ZG-Res-Key``: ``emb-``, ``img-``,
``stt-``, ``tts-`` and 32 hex digits) and serves its signature under that name.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from zgserve.common import media, multipart
from zgserve.common.body import ClientGone, header, read_body
from zgserve.common.errors import UpstreamError
from zgserve.common.headers import UPSTREAM_MODEL
from zgserve.common.signing import signed_text
from zgserve.service.outbound import RequestLimits, dumps
from zgserve.service.upstream import backend_error

if TYPE_CHECKING:
    from zgserve.service.routes import ServiceRuntime

_EXPOSE = (b"access-control-expose-headers", b"ZG-Res-Key")
_UPSTREAM_MODEL = UPSTREAM_MODEL.encode()
_ID_PREFIX: dict[media.MediaKind, str] = {
    "embeddings": "emb",
    "images": "img",
    "image_edits": "img",
    "transcriptions": "stt",
    "speech": "tts",
}
# What each kind may answer with; anything else from the backend is its fault (502).
_ANSWER_TYPES: dict[media.MediaKind, tuple[str, ...]] = {
    "embeddings": ("application/json",),
    "images": ("application/json",),
    "image_edits": ("application/json",),
    "transcriptions": ("application/json", "text/plain"),
    "speech": ("audio/",),
}
MEDIA_PATHS: dict[str, media.MediaKind] = {
    "/v1/embeddings": "embeddings",
    "/v1/images/generations": "images",
    "/v1/images/edits": "image_edits",
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/audio/speech": "speech",
}


def _model(value: bytes | None, fields: dict[str, Any], limits: RequestLimits) -> None:
    name = value.decode("latin-1") if value is not None else None
    if name is not None and 0 < len(name) <= 256 and name.isprintable():
        fields["model"] = name  # the catalog's name for the backend (from the broker, not a user)
    elif limits.default_model and not isinstance(fields.get("model"), str):
        fields["model"] = limits.default_model


def prepare_media(
    kind: media.MediaKind,
    body: bytes,
    content_type: bytes | None,
    limits: RequestLimits,
    upstream_model: bytes | None = None,
) -> tuple[str, bytes]:
    """``(content type, body)`` to send upstream; 400 for a request the service does not take."""
    if kind == "embeddings":
        request = media.embeddings_request(body)
        if request.token_lists and not limits.embedding_token_inputs:
            raise media.UnsupportedParameter(
                "this provider embeds text only: 'input' as token-id lists is not served", param="input"
            )
        fields = dict(request.payload)
    elif kind == "images":
        fields = dict(media.image_request(body, max_images=limits.max_choices).fields)
    elif kind == "speech":
        fields = dict(media.speech_request(body).payload)
    elif kind == "image_edits":
        edit = media.image_edit_request(body, content_type, max_images=limits.max_choices)
        texts = {k: str(v) for k, v in edit.fields.items()}
        _model(upstream_model, texts, limits)
        return multipart.encode(texts, edit.files)
    else:
        stt = media.transcription_request(body, content_type)
        texts = dict(stt.fields)
        _model(upstream_model, texts, limits)
        return multipart.encode(texts, {"file": stt.audio})
    _model(upstream_model, fields, limits)
    return "application/json", dumps(fields)


def _checked_answer(kind: media.MediaKind, content_type: str, data: bytes) -> str:
    """The answer's media type when it is what ``kind`` answers with; 502 otherwise."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type.startswith(_ANSWER_TYPES[kind]):
        raise UpstreamError(f"the model backend answered {kind} with {media_type or 'no content type'!r}")
    if media_type == "application/json":
        try:
            obj = json.loads(data)
        except ValueError:
            raise UpstreamError("the model backend answered with invalid JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamError("the model backend answered with JSON that is not an object")
    elif not data:
        raise UpstreamError("the model backend answered with an empty body")
    return content_type


class MediaEndpoint:
    """``POST`` of one media route: read, checked, forwarded, signed, answered whole."""

    def __init__(self, runtime: ServiceRuntime, upstream_path: str, kind: media.MediaKind) -> None:
        self.runtime = runtime
        self.upstream_path = upstream_path
        self.kind: media.MediaKind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        try:
            body = await read_body(scope, receive, runtime.limits.max_request_bytes)
        except ClientGone:
            return
        content_type, outbound = prepare_media(
            self.kind,
            body,
            header(scope, b"content-type"),
            runtime.limits,
            header(scope, _UPSTREAM_MODEL),
        )
        upstream = runtime.upstream
        resp = await upstream.post(self.upstream_path, outbound, content_type=content_type)
        data = await upstream.read(resp)
        if not 200 <= resp.status < 300:
            status, data = backend_error(resp.status, data)
            await _send(send, status, "application/json", data, None)
            return
        answer_type = _checked_answer(self.kind, resp.content_type, data)
        response_id = f"{_ID_PREFIX[self.kind]}-{uuid.uuid4().hex}"
        runtime.proxy.sign(response_id, signed_text(body, data))
        await _send(send, 200, answer_type, data, response_id)


async def _send(send: Send, status: int, content_type: str, body: bytes, response_id: str | None) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    if response_id is not None:
        headers += [(b"zg-res-key", response_id.encode()), _EXPOSE]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def media_endpoints(runtime: ServiceRuntime) -> dict[str, MediaEndpoint]:
    return {path: MediaEndpoint(runtime, path, kind) for path, kind in MEDIA_PATHS.items()}
