"""The catalog as ``GET /v1/models`` shows it: the SDK's ``ProviderModelInfo``, one object per model.

The SDK (``getProviderModels``), its CLI (``inference get-models``) and routers read
this from the on-chain ``service.url`` + ``/v1/models``. Prices are decimal strings of
neuron per token (``pricing.prompt`` / ``pricing.completion``), as the official broker
sends them; the CLI prints ``N/A`` when they are missing. The ``*`` wildcard entry is a
billing catch-all, not a model a client can pick, so it is left out, as the official
broker does (its price is still the catalog's and bounds the on-chain price).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from zgserve.broker.catalog import Catalog, CatalogModel
from zgserve.common.parameters import SUPPORTED_CHAT_PARAMETERS
from zgserve.common.pricing import pricing_json

# modelInfo keys copied to the model object, by their snake_case wire name; the
# official configuration spells them in camelCase, ours may use either.
_INFO_KEYS = (
    "name",
    "description",
    "architecture",
    "default_parameters",
    "supported_formats",
    "tee_type",
    "expiration_date",
)


@dataclass(frozen=True, slots=True)
class ListingContext:
    """What every model object shares: the provider and its TEE standing."""

    owner: str  # the provider address
    default_max_output_tokens: int  # ``billing.maxOutputTokens``, for models without their own cap
    verifiability: str
    tee_attested: bool  # the TEE signer is acknowledged on-chain
    tee_verifier: str | None = None
    # Per-user limits as the official broker lists them (requests/tokens per minute); every
    # model shares them. Left out when empty, as officially.
    rate_limits: Mapping[str, int] = field(default_factory=dict)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _info(info: Mapping[str, Any], key: str) -> Any:
    return info.get(key, info.get(_camel(key)))


# The request fields each media type takes (what :mod:`zgserve.common.media` accepts).
MEDIA_PARAMETERS: dict[str, tuple[str, ...]] = {
    "embedding": ("input", "encoding_format", "dimensions", "user"),
    "text-to-image": ("prompt", "n", "size", "quality", "style", "response_format", "user"),
    "image-editing": ("image", "mask", "prompt", "n", "size", "response_format", "user"),
    "speech-to-text": ("file", "language", "prompt", "response_format", "temperature"),
    "text-to-speech": ("input", "voice", "response_format", "speed", "instructions"),
}


def media_pricing(model: CatalogModel) -> dict[str, Any]:
    """``pricing``: per token as for chat; images add ``image`` (neuron per image at
    multiplier 1) and ``image_size_multipliers``; audio models add ``audio_second`` (neuron per
    second of the upload for speech-to-text, of the answer for text-to-speech)."""
    out = pricing_json(model.pricing)
    kind = model.service_type
    if kind in ("text-to-image", "image-editing"):
        out["image"] = str(model.pricing.output_price)
        if model.size_multipliers:
            out["image_size_multipliers"] = {
                size: _decimal(m) for size, m in sorted(model.size_multipliers.items())
            }
    elif kind == "speech-to-text":
        out["audio_second"] = str(model.pricing.input_price)
    elif kind == "text-to-speech":
        out["audio_second"] = str(model.pricing.output_price)
        out["max_audio_seconds"] = model.max_audio_seconds
    return out


def _decimal(value: Fraction) -> str:
    """A multiplier as configured (exact decimals only reach here: they came from decimal strings)."""
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def model_object(model: CatalogModel, ctx: ListingContext) -> dict[str, Any]:
    """One ``ProviderModelInfo``."""
    info = model.model_info
    obj: dict[str, Any] = {"id": model.id, "object": "model", "owned_by": ctx.owner}
    if model.canonical_id:
        obj["canonical_id"] = model.canonical_id
    obj["type"] = model.service_type
    context_length = model.context_length or _info(info, "context_length")
    if isinstance(context_length, int) and context_length > 0:
        obj["context_length"] = context_length
    obj["max_completion_tokens"] = model.max_output_tokens or ctx.default_max_output_tokens
    for key in _INFO_KEYS:
        value = _info(info, key)
        if value not in (None, "", [], {}):
            obj[key] = value
    configured = _info(info, "supported_parameters")
    default_parameters = MEDIA_PARAMETERS.get(model.service_type, SUPPORTED_CHAT_PARAMETERS)
    obj["supported_parameters"] = (
        list(configured) if isinstance(configured, list) and configured else list(default_parameters)
    )
    obj["pricing"] = media_pricing(model)
    obj["verifiability"] = ctx.verifiability
    obj["tee_attested"] = ctx.tee_attested
    if ctx.tee_verifier:
        obj["tee_verifier"] = ctx.tee_verifier
    if ctx.rate_limits:
        obj["rate_limits"] = dict(ctx.rate_limits)
    return obj


def model_list(catalog: Catalog, ctx: ListingContext) -> dict[str, Any]:
    """The ``/v1/models`` body: ``{"object": "list", "data": [...]}``, the catalog's order kept."""
    return {"object": "list", "data": [model_object(m, ctx) for m in catalog if not m.is_wildcard]}
