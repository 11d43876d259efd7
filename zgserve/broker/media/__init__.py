"""Billing of embeddings, images and audio: what each request reserves and what its answer costs.

One rule per route (after ``/v1/proxy``); the model types a route serves in :data:`SERVES`.

* ``/embeddings``: reserves ``max_fee(body bytes / bytesPerToken, 0)``; charges
  ``fee(usage.prompt_tokens, 0)`` (tiers apply).
* ``/images/generations``, ``/images/edits``: reserves ``ceil(n × m) × outputPrice``; charges
  ``ceil(min(images returned, n) × m) × outputPrice``.
* ``/audio/transcriptions``: reserves and charges ``max(round(frames / samplerate), 1) ×
  inputPrice`` of the upload (whole seconds, halves up: the official broker's and SDK's unit),
  measured before it is forwarded.
* ``/audio/speech``: reserves ``reserve_seconds(text) × outputPrice``; charges
  ``frames × outputPrice // samplerate`` of the audio returned.

``m`` is the model's multiplier for the requested size (``sizeMultipliers``, exact decimals;
1 when unlisted); prices are neuron per token, per image, per audio second. Audio is
measured by us with libsndfile (``soundfile``): the upload before it is forwarded, the
speech from the bytes returned; durations are never taken from a client or a backend.
Every other division rounds down, in the user's favour, and never above what a whole number
of seconds times the price allows an audit to check (``fee <= units × price``). A charge is
never above its reservation (the relay clamps and logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from zgserve.broker.catalog import CatalogModel
from zgserve.common.errors import BadRequest
from zgserve.common.media import MediaKind

__all__ = ["SERVES", "Bill", "MediaPlan", "ParsedMedia", "UnsupportedModel", "check_model"]

# Which catalog model types each media route serves; chat and completions serve the others.
SERVES: dict[MediaKind, frozenset[str]] = {
    "embeddings": frozenset({"embedding", "chatbot"}),
    "images": frozenset({"text-to-image"}),
    "image_edits": frozenset({"image-editing"}),
    "transcriptions": frozenset({"speech-to-text"}),
    "speech": frozenset({"text-to-speech"}),
}
MEDIA_ONLY = frozenset({"embedding", "text-to-image", "image-editing", "speech-to-text", "text-to-speech"})


class UnsupportedModel(BadRequest):
    code = "unsupported_model"


def check_model(route: MediaKind | None, model: CatalogModel) -> None:
    """400 when ``model`` is not of a type the route serves (``None``: chat or completions)."""
    allowed = model.service_type not in MEDIA_ONLY if route is None else model.service_type in SERVES[route]
    if not allowed:
        raise UnsupportedModel(
            f"model {model.id[:128]!r} ({model.service_type}) is not served on this route", param="model"
        )


@dataclass(frozen=True, slots=True)
class Bill:
    """What an answer is charged, in the record's terms (units × unit prices bound the fee)."""

    fee: int
    input_units: int = 0  # prompt tokens, or whole seconds of audio in
    output_units: int = 0  # images (size-scaled), or whole seconds of audio out
    input_price: int = 0
    output_price: int = 0
    status: str = "complete"


class ParsedMedia(Protocol):
    """A media request as read, before its model is known."""

    @property
    def model_name(self) -> Any: ...


class MediaPlan(Protocol):
    """A priced request: ``reserve`` before forwarding, :meth:`bill` on a successful answer."""

    @property
    def reserve(self) -> int: ...

    async def bill(self, data: bytes, content_type: str) -> Bill: ...
