"""The media models ``zgserve up`` can serve beside chat: embeddings, speech, images, transcription.

Each modality is a backend and a verifiable service of its own in front of it, and one
catalog entry (``type`` and ``targetUrl``) in the broker's configuration:

* ``--embeddings``: the embedded llama.cpp server in embeddings mode (SmolLM2-135M,
  mean-pooled, ``zgserve model --embedding``), ``type: embedding``;
* ``--speech``: the package's espeak-ng server (:mod:`zgserve.stack.speech_server`),
  ``type: text-to-speech``;
* ``--image-url`` / ``--transcription-url``: the provider's own OpenAI-compatible image
  and transcription backends, ``type: text-to-image`` / ``speech-to-text``.

Every service of one provider signs with the same key: the chain holds one attested signing
address per provider, and the SDK's ``processResponse`` checks every answer against it. In
simulated mode that key lives in one file that the first service writes and the others read,
so the media services start once the chat service is up.

Prices are integers in neuron, set relative to the chat model's (``DEFAULT_OUTPUT_PRICE``
per completion token): per prompt token for embeddings, per image, per second of audio.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zgserve.common.errors import ConfigError
from zgserve.common.net import free_port
from zgserve.stack.processes import ProcessGroup, ProcessSpec
from zgserve.stack.steps import Steps

if TYPE_CHECKING:
    from zgserve.stack.local import UpOptions

EMBEDDING_MODEL = "SmolLM2-135M-embed"
SPEECH_MODEL = "espeak-ng"
EMBEDDING_PRICE = 100_000_000  # per prompt token: a twentieth of a chat completion token
SPEECH_PRICE = 100_000_000_000  # per second of speech returned: 50 completion tokens
TRANSCRIPTION_PRICE = 50_000_000_000  # per second of audio uploaded
IMAGE_PRICE = 10_000_000_000_000  # per image: 5,000 completion tokens
MAX_SPEECH_SECONDS = 120  # the most one speech answer may reserve
EMBEDDING_CONTEXT = 512  # tokens; enough for any demo text, small to load fast


@dataclass(frozen=True)
class MediaOptions:
    """Which media models to serve; all off is the chat-only stack."""

    embeddings: bool = False
    speech: bool = False
    image_url: str | None = None
    image_model: str = "image"
    transcription_url: str | None = None
    transcription_model: str = "transcription"

    @property
    def any(self) -> bool:
        return self.embeddings or self.speech or bool(self.image_url) or bool(self.transcription_url)

    def check(self) -> None:
        """Fail before anything starts: a bad URL, or espeak-ng missing for ``--speech``."""
        from zgserve.stack.speech_server import espeak_available

        for flag, url in (("--image-url", self.image_url), ("--transcription-url", self.transcription_url)):
            if url is not None and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{flag} must be an http(s) URL, got {url!r}")
        if self.speech and not espeak_available():
            raise ConfigError("--speech needs espeak-ng (Debian: apt-get install espeak-ng)")


@dataclass(frozen=True)
class MediaService:
    """One served media model: its catalog entry, its verifiable service and its backend."""

    model: str
    type: str
    input_price: int
    output_price: int
    service_url: str
    backend_url: str
    backend_label: str  # what the backend is, for the printed URLs

    def catalog_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.model,
            "type": self.type,
            "inputPrice": self.input_price,
            "outputPrice": self.output_price,
            "targetUrl": self.service_url + "/v1",
        }
        if self.type == "text-to-speech":
            entry["maxAudioSeconds"] = MAX_SPEECH_SECONDS
        return entry


@dataclass(frozen=True)
class _Planned:
    key: str  # names the processes and the service's files
    model: str
    type: str
    input_price: int
    output_price: int
    backend_label: str
    backend_url: str | None  # None: the stack starts the backend on ``backend_port``
    backend_argv: tuple[str, ...] = ()
    backend_port: int = 0


@dataclass(frozen=True)
class MediaLaunch:
    """Where and how the media processes run (from ``zgserve up``'s options)."""

    host: str
    zgserve: tuple[str, ...]  # how to run this installation's ``zgserve``
    threads: int
    log_dir: Path
    up_dir: Path
    key_file: Path  # the provider's one simulated signing key, shared by every service
    ready_timeout_s: float
    pick_port: Callable[[], int]  # a free port on ``host``

    @classmethod
    def for_up(cls, options: UpOptions, key_file: Path, zgserve: tuple[str, ...]) -> MediaLaunch:
        return cls(
            host=options.host,
            zgserve=zgserve,
            threads=options.model_threads,
            log_dir=options.log_dir,
            up_dir=options.up_dir,
            key_file=key_file,
            ready_timeout_s=options.ready_timeout_s,
            pick_port=functools.partial(free_port, options.host),
        )

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def backend_spec(self, item: _Planned) -> ProcessSpec:
        return ProcessSpec(
            item.key,
            item.backend_argv,
            self.log_dir / f"{item.key}.log",
            ready_url=self.url(item.backend_port) + "/v1/models",
            ready_timeout_s=self.ready_timeout_s,
        )

    def service_spec(self, key: str, port: int, backend_url: str) -> ProcessSpec:
        argv = [*self.zgserve, "service", "--host", self.host, "--port", str(port)]
        argv += ["--target-url", backend_url, "--tee", "simulated"]
        argv += ["--store-path", str(self.up_dir / "service" / f"{key}.sqlite3")]
        return ProcessSpec(
            f"service-{key}",
            argv,
            self.log_dir / f"service-{key}.log",
            ready_url=self.url(port) + "/health",
            ready_timeout_s=self.ready_timeout_s,
            env={"ZG_SERVICE_SIMULATED_KEY_FILE": str(self.key_file.resolve())},
        )


def _plan(options: MediaOptions, launch: MediaLaunch) -> list[_Planned]:
    planned: list[_Planned] = []
    if options.embeddings:
        port = launch.pick_port()
        argv = [*launch.zgserve, "model", "--embedding", "--alias", EMBEDDING_MODEL, "--host", launch.host]
        argv += ["--port", str(port), "--n-threads", str(launch.threads), "--n-ctx", str(EMBEDDING_CONTEXT)]
        label = "llama.cpp embeddings, SmolLM2-135M mean-pooled"
        item = _Planned("embeddings", EMBEDDING_MODEL, "embedding", EMBEDDING_PRICE, 0, label, None)
        planned.append(replace(item, backend_argv=tuple(argv), backend_port=port))
    if options.speech:
        port = launch.pick_port()
        argv = [
            sys.executable,
            "-m",
            "zgserve.stack.speech_server",
            "--host",
            launch.host,
            "--port",
            str(port),
        ]
        item = _Planned("speech", SPEECH_MODEL, "text-to-speech", 0, SPEECH_PRICE, "espeak-ng", None)
        planned.append(replace(item, backend_argv=tuple(argv), backend_port=port))
    if options.image_url:
        # The official broker charges images at outputPrice and the SDK estimates them at
        # inputPrice: equal prices make both agree.
        planned.append(
            _Planned(
                "images", options.image_model, "text-to-image", IMAGE_PRICE, IMAGE_PRICE,
                "the provider's image backend", options.image_url.rstrip("/"),
            )
        )  # fmt: skip
    if options.transcription_url:
        planned.append(
            _Planned(
                "transcription", options.transcription_model, "speech-to-text", TRANSCRIPTION_PRICE, 0,
                "the provider's transcription backend", options.transcription_url.rstrip("/"),
            )
        )  # fmt: skip
    return planned


async def start_media(
    group: ProcessGroup, steps: Steps, options: MediaOptions, launch: MediaLaunch, key_written: asyncio.Event
) -> list[MediaService]:
    """Start every media backend at once, then (once ``key_written`` says the first service has
    written the shared key) a verifiable service in front of each."""

    async def start_one(item: _Planned) -> MediaService:
        backend_url = item.backend_url
        if backend_url is None:
            backend_url = launch.url(item.backend_port)
            async with steps.step(f"{item.model} backend loading ({item.backend_label})") as step:
                await group.start(launch.backend_spec(item))
                step.detail(backend_url)
        await key_written.wait()
        port = launch.pick_port()
        async with steps.step(f"Verifiable service for {item.model} ({item.type})") as step:
            await group.start(launch.service_spec(item.key, port, backend_url))
            step.detail(launch.url(port))
        return MediaService(
            item.model,
            item.type,
            item.input_price,
            item.output_price,
            launch.url(port),
            backend_url,
            item.backend_label,
        )

    tasks = [asyncio.create_task(start_one(item)) for item in _plan(options, launch)]
    try:
        # The first failure stops the others (and is raised as itself, not in a group).
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION) if tasks else (set(), set())
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
