"""A model's prices and the fee of one request, in integer neuron.

The official pricing modes, in the shape the SDK parses (``ProviderModelInfo.pricing``):

* flat: ``input_price`` per prompt token, ``output_price`` per completion token;
* tiered by prompt length: the first tier (by ``max_input_tokens``, ascending) whose
  bound the prompt does not exceed scales both prices by its fractional multipliers
  (``input_multiplier / input_denominator``, same for output); a prompt longer than
  every tier uses the last one;
* cache-token billing: ``cached_tokens`` of the prompt (``usage.prompt_tokens_details
  .cached_tokens``) cost the input price divided by ``cache_divisor``.

Rounding rule: each part of the fee is computed exactly as a fraction and rounded
down once (the provider never charges a fraction of a neuron it cannot justify).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tier:
    """Prices scaled by fractions for prompts up to ``max_input_tokens`` tokens."""

    max_input_tokens: int
    input_multiplier: int = 1
    input_denominator: int = 1
    output_multiplier: int = 1
    output_denominator: int = 1

    def __post_init__(self) -> None:
        if self.max_input_tokens < 0:
            raise ValueError("a tier's max_input_tokens must not be negative")
        if min(self.input_multiplier, self.output_multiplier) < 0:
            raise ValueError("a tier's multipliers must not be negative")
        if min(self.input_denominator, self.output_denominator) < 1:
            raise ValueError("a tier's denominators must be at least 1")


@dataclass(frozen=True, slots=True)
class Pricing:
    """Neuron per token, with optional tiers and cache-token billing."""

    input_price: int
    output_price: int
    tiers: tuple[Tier, ...] = ()
    cache_divisor: int | None = None

    def __post_init__(self) -> None:
        if min(self.input_price, self.output_price) < 0:
            raise ValueError("prices must not be negative")
        if self.cache_divisor is not None and self.cache_divisor < 1:
            raise ValueError("the cache divisor must be at least 1")
        bounds = [t.max_input_tokens for t in self.tiers]
        if bounds != sorted(set(bounds)):
            raise ValueError("tiers must have strictly ascending max_input_tokens")

    @classmethod
    def flat(cls, input_price: int, output_price: int) -> Pricing:
        return cls(input_price, output_price)

    def tier_for(self, prompt_tokens: int) -> Tier | None:
        """The tier a prompt of this length is billed in (None without tiers)."""
        for tier in self.tiers:
            if prompt_tokens <= tier.max_input_tokens:
                return tier
        return self.tiers[-1] if self.tiers else None

    def fee(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The fee of a request with this usage; ``cached_tokens`` are part of ``prompt_tokens``."""
        if min(prompt_tokens, completion_tokens, cached_tokens) < 0:
            raise ValueError("token counts must not be negative")
        cached = min(cached_tokens, prompt_tokens) if self.cache_divisor else 0
        tier = self.tier_for(prompt_tokens)
        in_num, in_den = (tier.input_multiplier, tier.input_denominator) if tier else (1, 1)
        out_num, out_den = (tier.output_multiplier, tier.output_denominator) if tier else (1, 1)
        divisor = self.cache_divisor or 1
        # Input: uncached tokens at the full price, cached ones at price / divisor, one rounding.
        input_fee = (
            ((prompt_tokens - cached) * divisor + cached) * self.input_price * in_num // (in_den * divisor)
        )
        output_fee = completion_tokens * self.output_price * out_num // out_den
        return input_fee + output_fee

    def max_fee(self, prompt_tokens: int, completion_tokens: int) -> int:
        """An upper bound of :meth:`fee` for any prompt up to ``prompt_tokens`` tokens and output
        up to ``completion_tokens``: what admission reserves."""
        candidates: Sequence[Tier | None] = [t for t in self.tiers if t.max_input_tokens < prompt_tokens] + [
            self.tier_for(prompt_tokens)
        ]
        best = 0
        for tier in candidates:
            bound = prompt_tokens if tier is None else min(prompt_tokens, tier.max_input_tokens)
            best = max(best, self.fee(bound, completion_tokens))
        return max(best, self.fee(prompt_tokens, completion_tokens))
