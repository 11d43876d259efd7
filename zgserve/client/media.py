"""Embeddings, images and audio from a provider, each answer verified against its signature.

``embed``, ``image``, ``transcribe`` and ``speak`` send one request through the provider's
broker (``/v1/proxy/...``), keep the exact request and response bytes, fetch the signature
of the answer (``ZG-Res-Key``) and check it: both hashes and the signer
(:func:`zgserve.client.provider.response_signer`). The fee the broker charged comes back
in ``fee`` (its ``X-0G-Fee`` header, neuron).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from zgserve.client.provider import response_signer
from zgserve.client.user import UserClient
from zgserve.client.verify import Verification, verify_signature
from zgserve.common.errors import NotFound, UpstreamError, UpstreamUnavailable, ZgError


@dataclass
class MediaAnswer:
    """One answer, its bytes as received, what it cost and whether its signature holds."""

    route: str
    request: bytes
    body: bytes
    content_type: str
    response_id: str | None
    fee: int | None
    verification: Verification = field(default_factory=Verification)
    record: dict[str, Any] | None = None  # the service's signature record (text, signature), kept

    @property
    def verified(self) -> bool:
        return self.verification.verified

    def json(self) -> Any:
        return json.loads(self.body)


class MediaRequestFailed(ZgError):
    """The provider refused or failed the request (its status and error message kept)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.http_status = status


def _form(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    boundary = "zgclient" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, (filename, data, kind) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        out += (head + f"Content-Type: {kind}\r\n\r\n").encode() + data + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


async def _exchange(
    user: UserClient, provider: str, route: str, model: str, content_type: str, body: bytes
) -> MediaAnswer:
    service = await user.get_service(provider)
    http = await user.provider_http(provider)
    headers = {**await user.session_headers(provider), "Content-Type": content_type}
    try:
        async with http.session.post(f"{http.openai_base_url}{route}", data=body, headers=headers) as resp:
            data = await resp.read()
            status, kind = resp.status, resp.headers.get("Content-Type", "")
            response_id, fee = resp.headers.get("ZG-Res-Key"), resp.headers.get("X-0G-Fee")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"provider {provider}: {exc!r}") from exc
    if status != 200:
        try:
            message = str(json.loads(data)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = data[:200].decode("utf-8", "replace")
        raise MediaRequestFailed(status, message)
    answer = MediaAnswer(route, body, data, kind, response_id, int(fee) if fee and fee.isdigit() else None)
    if response_id is None:
        answer.verification.add("response id", False, "the answer carries no ZG-Res-Key")
        return answer
    record = answer.record = await _signature(http.session, http.url, response_id, model)
    signer = response_signer(service)
    verify_signature(body, data, record, expected_address=signer, into=answer.verification)
    return answer


async def _signature(
    session: aiohttp.ClientSession, url: str, response_id: str, model: str
) -> dict[str, Any]:
    # The model names the service that signed it (a catalog model may have its own service).
    target = f"{url}/v1/proxy/signature/{quote(response_id, safe='')}?model={quote(model, safe='')}"
    for delay in (0.05, 0.1, 0.2, 0.4, 0.0):
        async with session.get(target) as resp:
            if resp.status == 200:
                record = await resp.json()
                if not isinstance(record, dict):
                    raise UpstreamError(f"signature of {response_id}: not a JSON object")
                return record
            if resp.status != 404:
                raise UpstreamError(f"signature of {response_id}: HTTP {resp.status}")
        if delay:
            await asyncio.sleep(delay)
    raise NotFound(f"no signature for {response_id}")


async def embed(user: UserClient, provider: str, text: str | list[str], *, model: str) -> MediaAnswer:
    """Embeddings of ``text`` (one string or several); ``.json()["data"][i]["embedding"]``."""
    body = json.dumps({"model": model, "input": text}).encode()
    return await _exchange(user, provider, "/embeddings", model, "application/json", body)


async def image(
    user: UserClient, provider: str, prompt: str, *, model: str, n: int = 1, size: str | None = None
) -> MediaAnswer:
    """Generated images; :func:`images_of` decodes them."""
    request: dict[str, Any] = {"model": model, "prompt": prompt, "n": n, "response_format": "b64_json"}
    if size is not None:
        request["size"] = size
    body = json.dumps(request).encode()
    return await _exchange(user, provider, "/images/generations", model, "application/json", body)


def images_of(answer: MediaAnswer) -> list[bytes]:
    """The images of an images answer, decoded from ``b64_json``."""
    return [
        base64.b64decode(item["b64_json"]) for item in answer.json().get("data", []) if "b64_json" in item
    ]


async def transcribe(
    user: UserClient,
    provider: str,
    audio: bytes,
    *,
    model: str,
    filename: str = "audio.wav",
    language: str | None = None,
) -> MediaAnswer:
    """A transcription of ``audio`` (billed per second of it); ``.json()["text"]``."""
    fields = {"model": model} | ({"language": language} if language else {})
    content_type, body = _form(fields, {"file": (filename, audio, "application/octet-stream")})
    return await _exchange(user, provider, "/audio/transcriptions", model, content_type, body)


async def speak(
    user: UserClient,
    provider: str,
    text: str,
    *,
    model: str,
    voice: str | None = None,
    response_format: str = "wav",
) -> MediaAnswer:
    """Speech of ``text`` (billed per second of the audio returned); the audio is ``.body``."""
    request: dict[str, Any] = {"model": model, "input": text, "response_format": response_format}
    if voice is not None:
        request["voice"] = voice
    body = json.dumps(request).encode()
    return await _exchange(user, provider, "/audio/speech", model, "application/json", body)
