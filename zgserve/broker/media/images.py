"""Images (generations and edits): per image at ``outputPrice``, scaled by the size's multiplier.

``n`` is capped (``billing.maxChoices``) and reserved before forwarding:
``ceil(n × m) × outputPrice``. The answer is charged for the images it carries,
``ceil(min(returned, n) × m) × outputPrice``: a backend that returns fewer costs less, one
that returns more costs no more than was reserved. An answer without a ``data`` list
is the backend's failure (502) and costs nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from zgserve.broker.catalog import CatalogModel
from zgserve.broker.media import Bill
from zgserve.common import media
from zgserve.common.errors import BadRequest, UpstreamError


@dataclass(frozen=True, slots=True)
class ParsedImages:
    request: media.ImageRequest

    @property
    def model_name(self) -> Any:
        return self.request.fields.get("model")


def parse(body: bytes, content_type: bytes | None, *, edit: bool, max_images: int) -> ParsedImages:
    if edit:
        return ParsedImages(media.image_edit_request(body, content_type, max_images=max_images))
    return ParsedImages(media.image_request(body, max_images=max_images))


def image_units(count: int, multiplier: Fraction) -> int:
    """Billable image units: ``ceil(count × multiplier)``, exact (no float)."""
    return math.ceil(count * multiplier)


@dataclass(frozen=True, slots=True)
class ImagePlan:
    n: int
    multiplier: Fraction
    price: int  # neuron per image unit (the model's output price)

    @property
    def reserve(self) -> int:
        return image_units(self.n, self.multiplier) * self.price

    async def bill(self, data: bytes, content_type: str) -> Bill:
        returned = count_images(data)
        units = image_units(min(returned, self.n), self.multiplier)
        return Bill(units * self.price, output_units=units, output_price=self.price)


class UnpricedSize(BadRequest):
    code = "unsupported_size"


def plan(parsed: ParsedImages, model: CatalogModel) -> ImagePlan:
    request = parsed.request
    size = request.size.strip().lower() if request.size is not None else None
    if size is not None and model.size_multipliers and size not in model.size_multipliers:
        # A provider that prices sizes sells those: another one could cost its backend far more
        # than the flat price (an unpriced size is billed at 1 only where no size is priced).
        sizes = ", ".join(sorted(model.size_multipliers))
        raise UnpricedSize(f"'size' must be one of {sizes} for this model", param="size")
    return ImagePlan(request.n, model.size_multiplier(request.size), model.pricing.output_price)


def count_images(data: bytes) -> int:
    """The images in an OpenAI images answer (``data`` items with ``b64_json`` or ``url``)."""
    try:
        items = json.loads(data).get("data")
    except (ValueError, AttributeError):
        items = None
    if not isinstance(items, list):
        raise UpstreamError("the image backend answered without a 'data' list")
    return sum(1 for item in items if isinstance(item, dict) and ("b64_json" in item or "url" in item))
