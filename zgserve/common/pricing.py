"""A model's prices and the fee of one request, in integer neuron, as the official broker charges it.

The official pricing modes, in the shape the SDK parses (``ProviderModelInfo.pricing``):

* flat: ``input_price`` per prompt token, ``output_price`` per completion token;
* tiered by prompt length: tiers are matched in ascending ``max_input_tokens``; the first tier
  whose bound the prompt does not exceed, or whose bound is 0 (unbounded, the catch-all, always
  last), is used; a prompt longer than every bounded tier uses the last tier. The tier scales the
  per-token prices by ``input_multiplier / input_denominator`` and
  ``output_multiplier / output_denominator``. Tiers are matched on the whole ``prompt_tokens``,
  cached tokens included;
* cache-token billing: ``cached_tokens`` of the prompt (``usage.prompt_tokens_details
  .cached_tokens``, clamped to ``prompt_tokens``) cost the (tiered) input price divided by
  ``cache_divisor``.

Rounding rule (the official broker's, ``internal/ctrl/chatbot.go``: ``applyTierMultiplier`` and
``computeInputFee``), two floors and nothing else:

1. the tier's per-token prices are rounded down first: ``in = input_price * num // den``, same for
   output (a 1x tier leaves the price as it is);
2. the cached tokens cost ``cached * in // cache_divisor``, rounded down once for all of them;
3. everything else is exact: ``fee = (prompt - cached) * in + cached * in // divisor
   + completion * out``.

So a tier's 3/2 on a price of 3 neuron bills 4 neuron per token (not 4.5), and 3 cached tokens at
7 neuron with divisor 2 cost 10 (not 10.5). Rounding the per-token price, not the total, is what
makes ``fee`` equal to the SDK's own ``calculateFee`` (``prompt_tokens * inputPrice +
completion_tokens * outputPrice``, BigInt) at the tier's per-token prices (:meth:`Pricing.unit_prices`)
whenever no token is cached. The SDK itself does not apply tiers or the cache discount to its local
fee estimate: it multiplies by the on-chain prices only, and shows tiered prices in its CLI with
float multipliers rounded half up; its estimate is therefore never below what is charged when the
on-chain prices are the highest tiered prices, as the official broker registers them.

The official broker refuses, at configuration time, tiers below 1x (it wants ``numerator >= denominator``),
more than 1000x, and denominators over 10**6. This module computes any non-negative fraction
(a zero multiplier makes that side free); what a provider may configure is the settings' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _check_count(name: str, value: int) -> None:
    # bool is an int subclass; a True token count or price is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True, slots=True)
class Tier:
    """Prices scaled by fractions for prompts up to ``max_input_tokens`` tokens (0: no bound)."""

    max_input_tokens: int
    input_multiplier: int = 1
    input_denominator: int = 1
    output_multiplier: int = 1
    output_denominator: int = 1

    def __post_init__(self) -> None:
        _check_count("a tier's max_input_tokens", self.max_input_tokens)
        _check_count("a tier's input_multiplier", self.input_multiplier)
        _check_count("a tier's output_multiplier", self.output_multiplier)
        _check_count("a tier's input_denominator", self.input_denominator)
        _check_count("a tier's output_denominator", self.output_denominator)
        if min(self.input_denominator, self.output_denominator) < 1:
            raise ValueError("a tier's denominators must be at least 1")

    @property
    def unbounded(self) -> bool:
        """The catch-all tier: the official configuration writes it ``maxInputTokens: 0``."""
        return self.max_input_tokens == 0

    def covers(self, prompt_tokens: int) -> bool:
        return self.unbounded or prompt_tokens <= self.max_input_tokens


def _tier_order(tier: Tier) -> tuple[int, int]:
    # Bounded tiers ascending, the unbounded one last: the only order the official broker accepts.
    return (1, 0) if tier.unbounded else (0, tier.max_input_tokens)


@dataclass(frozen=True, slots=True)
class Pricing:
    """Neuron per token, with optional tiers and cache-token billing.

    ``tiers`` may be given in any order; they are kept in matching order (ascending bounds, the
    unbounded tier last). Two tiers with the same bound, or two unbounded tiers, are refused.
    """

    input_price: int
    output_price: int
    tiers: tuple[Tier, ...] = ()
    cache_divisor: int | None = None

    def __post_init__(self) -> None:
        _check_count("input_price", self.input_price)
        _check_count("output_price", self.output_price)
        if self.cache_divisor is not None:
            _check_count("the cache divisor", self.cache_divisor)
            if self.cache_divisor < 1:
                raise ValueError("the cache divisor must be at least 1")
        ordered = tuple(sorted(self.tiers, key=_tier_order))
        bounds = [t.max_input_tokens for t in ordered]
        if len(set(bounds)) != len(bounds):
            raise ValueError("two tiers have the same max_input_tokens (0 is the one unbounded tier)")
        # Normalising the order here lets callers sort by bound naively (0 first) without
        # changing which tier bills; frozen, so set through object.
        object.__setattr__(self, "tiers", ordered)

    @classmethod
    def flat(cls, input_price: int, output_price: int) -> Pricing:
        return cls(input_price, output_price)

    def tier_for(self, prompt_tokens: int) -> Tier | None:
        """The tier a prompt of this length is billed in (None without tiers)."""
        for tier in self.tiers:
            if tier.covers(prompt_tokens):
                return tier
        return self.tiers[-1] if self.tiers else None

    def unit_prices(self, prompt_tokens: int) -> tuple[int, int]:
        """Neuron per input and per output token for a prompt of this length: the tier's fraction
        of the prices, each rounded down (rule 1 of the module docstring)."""
        _check_count("prompt_tokens", prompt_tokens)
        tier = self.tier_for(prompt_tokens)
        if tier is None:
            return self.input_price, self.output_price
        return (
            self.input_price * tier.input_multiplier // tier.input_denominator,
            self.output_price * tier.output_multiplier // tier.output_denominator,
        )

    def fee(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The fee of a request with this usage; ``cached_tokens`` are part of ``prompt_tokens``
        and are discounted only when cache-token billing is on."""
        _check_count("completion_tokens", completion_tokens)
        _check_count("cached_tokens", cached_tokens)
        in_price, out_price = self.unit_prices(prompt_tokens)
        if self.cache_divisor is None:
            return prompt_tokens * in_price + completion_tokens * out_price
        # A backend may report more cached tokens than the prompt has; never bill below zero.
        cached = min(cached_tokens, prompt_tokens)
        cached_fee = cached * in_price // self.cache_divisor
        return (prompt_tokens - cached) * in_price + cached_fee + completion_tokens * out_price

    def max_fee(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The highest :meth:`fee` of any prompt up to ``prompt_tokens`` tokens and any output up to
        ``completion_tokens``: what admission reserves.

        Within one tier the fee grows with the prompt and cached tokens only lower it, so the
        highest fee is at the top of each tier the range reaches: every bounded tier's bound
        below ``prompt_tokens``, and ``prompt_tokens`` itself. Checking each matters because a
        later tier may be cheaper than an earlier one.
        """
        _check_count("prompt_tokens", prompt_tokens)
        candidates = [
            t.max_input_tokens for t in self.tiers if not t.unbounded and t.max_input_tokens < prompt_tokens
        ]
        candidates.append(prompt_tokens)
        return max(self.fee(p, completion_tokens) for p in candidates)


def pricing_json(p: Pricing) -> dict[str, Any]:
    """The ``pricing`` object of the SDK's ``ProviderModelInfo`` (``/v1/models``).

    Prices are decimal strings of neuron per token; tiers carry the fraction as configured, the
    denominators only when not 1 (as the official broker writes them; the SDK reads a missing
    denominator as 1); ``cache_token_billing`` only when cache billing is on.
    """
    out: dict[str, Any] = {"prompt": str(p.input_price), "completion": str(p.output_price)}
    if p.tiers:
        out["tiered_pricing"] = tiers_json(p)
    if p.cache_divisor is not None:
        out["cache_token_billing"] = {"divisor": p.cache_divisor}
    return out


_SNAKE = ("max_input_tokens", "input_multiplier", "output_multiplier", "input_multiplier_denominator",
          "output_multiplier_denominator")  # fmt: skip
_CAMEL = ("maxInputTokens", "inputMultiplier", "outputMultiplier", "inputMultiplierDenominator",
          "outputMultiplierDenominator")  # fmt: skip


def tiers_json(p: Pricing, *, camel: bool = False) -> list[dict[str, int]]:
    """The tiers as the SDK reads them: snake_case in ``/v1/models``, camelCase in the on-chain
    ``additionalInfo``; denominators only when not 1 (the SDK reads a missing one as 1)."""
    bound, inp, outp, inp_den, outp_den = _CAMEL if camel else _SNAKE
    tiers: list[dict[str, int]] = []
    for t in p.tiers:
        tier = {bound: t.max_input_tokens, inp: t.input_multiplier, outp: t.output_multiplier}
        if t.input_denominator != 1:
            tier[inp_den] = t.input_denominator
        if t.output_denominator != 1:
            tier[outp_den] = t.output_denominator
        tiers.append(tier)
    return tiers
