"""The demo user's media steps: one request per media model the provider lists, each verified.

For every model of ``/v1/models`` whose ``type`` is a media type (``zgserve up --media``,
``--image-url``, ``--transcription-url``), the user sends one request with the client's
helpers (:mod:`zgserve.client.media`) and checks:

* the service's signature over the exact bytes sent and received, by the attested key, and
  the model's own service's attestation report (fresh nonce) naming that same key;
* the fee: what the user computes from the answer and the listed prices by the billing
  rule, the broker's ``X-0G-Fee`` and what the broker recorded are one number;
* later, in the settlement audit, the receipt of the answer (units, fee, signature) against
  what the user kept (:func:`zgserve.client.settlements.audit_settlements`).

Audio is measured by the user as the broker does (libsndfile); the transcription step
uploads the speech answer when speech is served, else a generated tone.
"""

from __future__ import annotations

import io
import math
import secrets
import struct
import time
import wave
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import soundfile  # type: ignore[import-untyped]

from zgserve.client import media
from zgserve.client.audit import HeldResponse
from zgserve.client.provider import response_signer
from zgserve.client.user import UserClient
from zgserve.client.verify import Verification
from zgserve.stack.steps import Steps

# The media types a demo step exists for, in the order the steps run.
MEDIA_STEPS = ("embedding", "text-to-speech", "text-to-image", "speech-to-text")
EMBED_TEXT = "A signed answer can be checked by anyone who holds it."
SPEECH_TEXT = "Every answer of this provider is signed, metered and settled on chain."
IMAGE_PROMPT = "a lighthouse at dawn, watercolour"
TONE_SECONDS = 2.0


@dataclass
class MediaOutcome:
    """One media answer: what came back, its fee three ways, and its signature check."""

    kind: str
    model: str
    summary: str
    fee: int  # the billing rule at the listed prices, from the answer as the user measures it
    charged: int | None  # the broker's X-0G-Fee
    recorded_fee: int | None  # what the broker recorded for this response id
    seconds: float
    verification: Verification = field(default_factory=Verification)
    held: HeldResponse | None = None  # for the settlement audit

    @property
    def ok(self) -> bool:
        return self.verification.verified and self.charged == self.fee == self.recorded_fee


@dataclass(frozen=True)
class _Audio:
    frames: int
    samplerate: int

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate


def _measure(data: bytes) -> _Audio:
    info = soundfile.info(io.BytesIO(data))
    return _Audio(int(info.frames), int(info.samplerate))


def tone_wav(seconds: float = TONE_SECONDS, rate: int = 16_000) -> bytes:
    """A real mono 16-bit WAV of a 440 Hz tone (something to transcribe without speech)."""
    frames = int(seconds * rate)
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(frames)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return out.getvalue()


def _held(answer: media.MediaAnswer, input_units: int, output_units: int) -> HeldResponse | None:
    if answer.response_id is None:
        return None
    record = answer.record or {}
    text, signature = record.get("text"), record.get("signature")
    return HeldResponse(
        answer.response_id,
        input_units,
        output_units,
        answer.request,
        answer.body,
        str(text) if text is not None else None,
        str(signature) if signature is not None else None,
    )


def _price(model: dict[str, Any], key: str) -> int:
    return int(model.get("pricing", {}).get(key, 0))


class MediaDemo:
    """Runs the media steps for one user and provider; problems go to ``problem``."""

    def __init__(
        self,
        user: UserClient,
        provider: str,
        *,
        steps: Steps,
        recorded_fee: Callable[[str], Awaitable[int | None]],
        problem: Callable[[str], None],
    ) -> None:
        self.user, self.provider, self.steps = user, provider, steps
        self.recorded_fee, self.problem = recorded_fee, problem
        self.outcomes: list[MediaOutcome] = []
        self._speech: bytes | None = None

    async def run(self, listed: Iterable[dict[str, Any]]) -> list[MediaOutcome]:
        """One step per listed media model, in :data:`MEDIA_STEPS` order; a failed step is a problem."""
        by_type: dict[str, dict[str, Any]] = {}
        for model in listed:
            by_type.setdefault(str(model.get("type")), model)
        steps = {
            "embedding": self._embed,
            "text-to-speech": self._speak,
            "text-to-image": self._image,
            "speech-to-text": self._transcribe,
        }
        for kind in MEDIA_STEPS:
            if kind not in by_type:
                continue
            model = by_type[kind]
            title = f"Demo user asks for {kind} ({model['id']}) and verifies it"
            try:
                async with self.steps.step(title) as step:
                    started = time.monotonic()
                    outcome = await steps[kind](model)
                    await self._attested(str(model["id"]), outcome.verification)
                    outcome.seconds = time.monotonic() - started
                    await self._judge(outcome)
                    step.detail(f"{outcome.summary}, fee {outcome.charged} neuron")
            except Exception as exc:  # the report says what failed; the other steps still run
                self.problem(f"{kind} ({model['id']}): {type(exc).__name__}: {exc}")
        return self.outcomes

    async def _attested(self, model: str, into: Verification) -> None:
        """The model's own service attests the provider's one signing key (what the SDK fetches)."""
        service = await self.user.get_service(self.provider)
        http = await self.user.provider_http(self.provider)
        nonce = secrets.token_bytes(32)
        url = f"{http.url}/v1/proxy/attestation/report?model={quote(model, safe='')}&nonce={nonce.hex()}"
        async with http.session.get(url) as resp:
            report = await resp.json() if resp.status == 200 else {}
        address = str(report.get("signing_address", "")) if isinstance(report, dict) else ""
        expected = response_signer(service)
        into.add(
            f"the {model} service's attestation (fresh nonce) names the provider's signing address",
            address.lower() == expected.lower() and report.get("request_nonce") == nonce.hex(),
            address or f"HTTP {resp.status}",
        )

    async def _judge(self, outcome: MediaOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.held is not None:
            outcome.recorded_fee = await self.recorded_fee(outcome.held.response_id)
        name = f"{outcome.kind} ({outcome.model})"
        for failed in [*outcome.verification.failed, *outcome.verification.not_checked]:
            self.problem(f"{name}: {failed.name}: {failed.detail}")
        if not outcome.charged == outcome.fee == outcome.recorded_fee:
            self.problem(
                f"{name}: the billing rule says {outcome.fee} neuron, the broker charged "
                f"{outcome.charged} and recorded {outcome.recorded_fee}"
            )

    def _outcome(
        self, kind: str, model: dict[str, Any], answer: media.MediaAnswer, **kw: Any
    ) -> MediaOutcome:
        return MediaOutcome(
            kind=kind,
            model=str(model["id"]),
            charged=answer.fee,
            recorded_fee=None,
            seconds=0.0,
            verification=answer.verification,
            **kw,
        )

    async def _embed(self, model: dict[str, Any]) -> MediaOutcome:
        answer = await media.embed(self.user, self.provider, EMBED_TEXT, model=model["id"])
        body = answer.json()
        tokens = int(body["usage"]["prompt_tokens"])
        dims = len(body["data"][0]["embedding"])
        return self._outcome(
            "embeddings",
            model,
            answer,
            summary=f"{tokens} prompt tokens, a vector of {dims} floats",
            fee=tokens * _price(model, "prompt"),
            held=_held(answer, tokens, 0),
        )

    async def _speak(self, model: dict[str, Any]) -> MediaOutcome:
        answer = await media.speak(self.user, self.provider, SPEECH_TEXT, model=model["id"])
        audio = _measure(answer.body)
        self._speech = answer.body
        return self._outcome(
            "speech",
            model,
            answer,
            summary=f"{audio.seconds:.2f} s of WAV speech ({len(answer.body)} bytes)",
            fee=audio.frames * _price(model, "audio_second") // audio.samplerate,
            held=_held(answer, 0, -(-audio.frames // audio.samplerate)),
        )

    async def _image(self, model: dict[str, Any]) -> MediaOutcome:
        answer = await media.image(self.user, self.provider, IMAGE_PROMPT, model=model["id"], n=1)
        images = media.images_of(answer)
        pngs = sum(1 for image in images if image.startswith(b"\x89PNG\r\n\x1a\n"))
        count = min(len(images), 1)
        return self._outcome(
            "image",
            model,
            answer,
            summary=f"{len(images)} image(s), {pngs} PNG, {sum(map(len, images))} bytes",
            fee=count * _price(model, "image"),
            held=_held(answer, 0, count),
        )

    async def _transcribe(self, model: dict[str, Any]) -> MediaOutcome:
        audio_bytes = self._speech or tone_wav()
        audio = _measure(audio_bytes)
        # Whole seconds, halves up, at least one: the official unit of transcriptions.
        seconds = max((2 * audio.frames + audio.samplerate) // (2 * audio.samplerate), 1)
        answer = await media.transcribe(self.user, self.provider, audio_bytes, model=model["id"])
        text = str(answer.json().get("text", ""))
        source = "the speech answer" if self._speech else "a tone"
        return self._outcome(
            "transcription",
            model,
            answer,
            summary=f"{audio.seconds:.2f} s of {source} -> {text[:60]!r}",
            fee=seconds * _price(model, "audio_second"),
            held=_held(answer, seconds, 0),
        )
