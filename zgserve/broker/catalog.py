"""The provider's catalog: the models it sells, each with its prices, upstream and limits.

A request's ``model`` picks its entry: an exact id first, then an alias, then the
``*`` wildcard entry if there is one; anything else is refused with 404
``model_not_found`` before anything is reserved. A provider configured the old way
(``model``, ``inputPrice``, ``outputPrice``) has a catalog of one, which also serves
requests that name no model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from zgserve.common.errors import NotFound
from zgserve.common.pricing import Pricing, Tier

if TYPE_CHECKING:
    from zgserve.broker.settings import BrokerSettings, ModelSettings

WILDCARD = "*"


class ModelNotFound(NotFound):
    code = "model_not_found"


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One model of the catalog."""

    id: str
    pricing: Pricing
    upstream_model: str | None = None  # the name the backend knows it by (None: ``id``)
    aliases: tuple[str, ...] = ()
    target_url: str | None = None  # its own verifiable service, OpenAI base (None: ``targetUrl``)
    max_output_tokens: int | None = None  # per answer (None: ``billing.maxOutputTokens``)
    service_type: str = "chatbot"
    context_length: int | None = None
    canonical_id: str | None = None
    model_info: Mapping[str, Any] = field(default_factory=dict)
    # Images: the price of one image is ``output_price`` times the size's multiplier (1 if unlisted).
    size_multipliers: Mapping[str, Fraction] = field(default_factory=dict)
    max_audio_seconds: int = 600  # text-to-speech: the most seconds reserved for one answer

    @property
    def is_wildcard(self) -> bool:
        return self.id == WILDCARD

    def size_multiplier(self, size: str | None) -> Fraction:
        """The price multiplier of an image size (case and spaces ignored; 1 when not listed)."""
        if size is None:
            return Fraction(1)
        return self.size_multipliers.get(size.strip().lower(), Fraction(1))


class Catalog:
    """Models by id and alias; :meth:`resolve` is the one place a request's model is decided."""

    def __init__(self, models: Sequence[CatalogModel]) -> None:
        if not models:
            raise ValueError("a catalog needs at least one model")
        self.models = tuple(models)
        self._by_name: dict[str, CatalogModel] = {}
        self._wildcard: CatalogModel | None = None
        for model in self.models:
            if model.is_wildcard:
                if self._wildcard is not None:
                    raise ValueError("at most one '*' model")
                self._wildcard = model
                continue
            for name in (model.id, *model.aliases):
                if name in self._by_name:
                    raise ValueError(f"model name {name!r} is used twice in the catalog")
                self._by_name[name] = model
        for model in self.models:
            for alias in model.aliases:
                if alias in {m.id for m in self.models if m is not model}:
                    raise ValueError(f"alias {alias!r} is also a model id")

    def __iter__(self) -> Iterator[CatalogModel]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def default(self) -> CatalogModel:
        """The first model: what a request without ``model`` gets when the catalog has one model."""
        return self.models[0]

    def resolve(self, name: Any) -> CatalogModel:
        """The entry for a request's ``model`` value (exact, alias, wildcard), or 404."""
        if name is None and len(self.models) == 1:
            return self.default
        if not isinstance(name, str) or not name:
            raise ModelNotFound("the request names no model; see /v1/models", param="model")
        model = self._by_name.get(name) or self._wildcard
        if model is None:
            raise ModelNotFound(f"this provider does not serve model {name[:128]!r}", param="model")
        return model

    def with_pricing(self, model_id: str, pricing: Pricing) -> Catalog:
        """A copy in which ``model_id`` has ``pricing`` (requests already admitted keep theirs)."""
        if model_id not in {m.id for m in self.models}:
            raise KeyError(model_id)
        return Catalog([replace(m, pricing=pricing) if m.id == model_id else m for m in self.models])

    def onchain_prices(self) -> tuple[int, int]:
        """The prices registered on-chain: the highest of the catalog, as the official broker does."""
        return (
            max(m.pricing.input_price for m in self.models),
            max(m.pricing.output_price for m in self.models),
        )


def _model(entry: ModelSettings, default_type: str) -> CatalogModel:
    tiers = tuple(
        Tier(
            t.max_input_tokens,
            t.input_multiplier,
            t.input_multiplier_denominator,
            t.output_multiplier,
            t.output_multiplier_denominator,
        )
        for t in sorted(entry.tiered_pricing, key=lambda t: t.max_input_tokens)
    )
    cache = entry.cache_token_billing.divisor if entry.cache_token_billing else None
    return CatalogModel(
        id=entry.id,
        pricing=Pricing(entry.input_price, entry.output_price, tiers, cache),
        upstream_model=entry.upstream_model,
        aliases=tuple(entry.aliases),
        target_url=entry.target_url,
        max_output_tokens=entry.max_output_tokens,
        service_type=entry.type or default_type,
        context_length=entry.context_length,
        canonical_id=entry.canonical_id,
        model_info=dict(entry.model_info),
        size_multipliers={k: Fraction(Decimal(v)) for k, v in entry.size_multipliers.items()},
        max_audio_seconds=entry.max_audio_seconds,
    )


def catalog_from_settings(settings: BrokerSettings) -> Catalog:
    """The catalog of ``models``, or the single ``model`` at ``inputPrice``/``outputPrice``."""
    if settings.models:
        return Catalog([_model(m, settings.registration.service_type) for m in settings.models])
    single = CatalogModel(
        id=settings.model,
        pricing=Pricing.flat(settings.input_price, settings.output_price),
        service_type=settings.registration.service_type,
    )
    return Catalog([single])
