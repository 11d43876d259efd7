"""The media stack of the broker tests: backends, a verifiable service in front of each, a catalog.

* embeddings: llama.cpp (SmolLM2-135M, mean-pooled) in its own process;
* speech: real TTS with ``espeak-ng``; transcription and images: stand-ins
  (:mod:`tests.fakes.media_backend`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.asgi import serve
from tests.fakes.media_backend import MediaBackend
from zgserve.service.llama import LlamaConfig, LlamaServer

EMBED_PRICE = 3_000  # neuron per prompt token
IMAGE_PRICE = 1_000_000  # neuron per image unit
STT_PRICE = 48_000  # neuron per second of uploaded audio
TTS_PRICE = 96_000  # neuron per second of returned audio


@dataclass
class MediaStack:
    backend: MediaBackend
    media_service: str  # OpenAI base of the service in front of the media backend (…/v1)
    embedding_service: str
    embed_backend: str = ""  # the llama.cpp embeddings server itself

    def models(self) -> list[dict[str, Any]]:
        media = self.media_service
        return [
            {"id": "chat", "inputPrice": 1, "outputPrice": 1},
            {
                "id": "embed",
                "type": "embedding",
                "inputPrice": EMBED_PRICE,
                "outputPrice": 0,
                "targetUrl": self.embedding_service,
                "upstreamModel": "embed",
                "tieredPricing": [
                    {"maxInputTokens": 8, "inputMultiplier": 1},
                    {"maxInputTokens": 0, "inputMultiplier": 3, "inputMultiplierDenominator": 2},
                ],
            },
            {
                "id": "painter",
                "type": "text-to-image",
                "inputPrice": 0,
                "outputPrice": IMAGE_PRICE,
                "targetUrl": media,
                "sizeMultipliers": {"64x64": "1.5", "1024x1024": "4"},
            },
            {
                "id": "editor",
                "type": "image-editing",
                "inputPrice": 0,
                "outputPrice": IMAGE_PRICE,
                "targetUrl": media,
            },
            {
                "id": "ears",
                "type": "speech-to-text",
                "inputPrice": STT_PRICE,
                "outputPrice": 0,
                "targetUrl": media,
            },
            {
                "id": "voice",
                "type": "text-to-speech",
                "inputPrice": 0,
                "outputPrice": TTS_PRICE,
                "targetUrl": media,
                "maxAudioSeconds": 30,
            },
            {
                "id": "terse-voice",
                "type": "text-to-speech",
                "inputPrice": 0,
                "outputPrice": TTS_PRICE,
                "targetUrl": media,
                "maxAudioSeconds": 1,  # less than any sentence lasts: the charge is clamped to it
            },
        ]


@contextlib.asynccontextmanager
async def media_stack(tmp: Path) -> AsyncIterator[MediaStack]:
    from zgserve.service.app import create_app as create_service
    from zgserve.service.settings import load_settings as load_service_settings

    def service(target: str, name: str) -> Any:
        settings = load_service_settings(
            target_url=target,
            tee="simulated",
            gpu_evidence="off",
            store_path=tmp / f"{name}.sqlite3",
            simulated_key_file=tmp / "service-key.json",  # one provider: one signing key
        )
        return serve(create_service(settings))

    llama = LlamaServer(LlamaConfig(embedding=True, alias="embed", n_ctx=512, log_path=tmp / "embed.log"))
    async with (
        MediaBackend() as backend,
        llama,
        service(backend.url, "media") as media_url,
        service(llama.base_url, "embed") as embed_url,
    ):
        yield MediaStack(backend, media_url + "/v1", embed_url + "/v1", llama.base_url)


def upload(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, data, content_type) in files.items():
        form.add_field(name, data, filename=filename, content_type=content_type)
    return form
