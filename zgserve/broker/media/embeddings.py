"""Embeddings: prompt tokens × the input price, tiers applied; reserved from the body's size."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from zgserve.broker.media import Bill
from zgserve.common import media
from zgserve.common.pricing import Pricing


@dataclass(frozen=True, slots=True)
class ParsedEmbeddings:
    request: media.EmbeddingsRequest
    body_size: int

    @property
    def model_name(self) -> Any:
        return self.request.payload.get("model")


def parse(body: bytes) -> ParsedEmbeddings:
    return ParsedEmbeddings(media.embeddings_request(body), len(body))


@dataclass(frozen=True, slots=True)
class EmbeddingsPlan:
    """The reservation covers any prompt up to ``body bytes / bytesPerToken`` tokens: a token
    is at least one byte of the JSON body (token ids at least two: a digit and a comma)."""

    pricing: Pricing
    chars: int
    reserve: int

    async def bill(self, data: bytes, content_type: str) -> Bill:
        prompt = _prompt_tokens(data)
        status = "complete"
        if prompt is None:
            # The backend counted nothing: a low estimate (a token per 4 characters), never zero.
            prompt, status = max(1, self.chars // 4), "estimated"
        in_price, out_price = self.pricing.unit_prices(prompt)
        fee = self.pricing.fee(prompt, 0)
        return Bill(fee, input_units=prompt, input_price=in_price, output_price=out_price, status=status)


def plan(parsed: ParsedEmbeddings, pricing: Pricing, bytes_per_token: int) -> EmbeddingsPlan:
    estimate = -(-parsed.body_size // bytes_per_token)  # ceil, as billing.input_estimate
    return EmbeddingsPlan(pricing, parsed.request.chars, pricing.max_fee(estimate, 0))


def _prompt_tokens(data: bytes) -> int | None:
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return None
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40:
        return value
    return None
