"""The one decision on how many tokens a completion request may generate.

The broker reserves this many output tokens before forwarding, and the service
tells the backend the same cap (it rewrites ``max_tokens`` in what it sends
upstream, while signing the client's bytes), so a request can never generate,
and so never cost, more than was reserved. Every field an OpenAI-compatible
backend honours for the length or the number of answers is read here:

* ``max_tokens`` / ``max_completion_tokens``: the smaller one counts when both
  are given (vLLM prefers one, llama.cpp the other; the backend is told one value
  in both); ``null`` is the same as absent; none given means the provider's limit;
* ``n`` (answers returned) and ``best_of`` (answers generated, legacy completions):
  each answer may use the full per-answer cap, so the reservation multiplies;
* reasoning tokens are output tokens: backends count them in ``completion_tokens``
  and within ``max_tokens``.

A value above the provider's limit is lowered to it (clients routinely ask for
more than a model gives); a value that is not a positive integer is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zgserve.common.errors import BadRequest

LENGTH_FIELDS = ("max_tokens", "max_completion_tokens")
CHOICE_FIELDS = ("n", "best_of")
# Not the OpenAI names, but honoured by some backends for the same thing; never forwarded.
FOREIGN_LENGTH_FIELDS = ("n_predict", "max_new_tokens", "max_length", "min_tokens", "ignore_eos")
# Far beyond any real request; keeps the fee arithmetic on small integers.
MAX_CHOICES_HARD = 128


class InvalidOutputCap(BadRequest):
    code = "invalid_output_limit"


@dataclass(frozen=True, slots=True)
class OutputCap:
    """``per_choice`` tokens for each of ``choices`` generated answers."""

    per_choice: int
    choices: int

    @property
    def total(self) -> int:
        """The most output tokens the request can be billed for: the reservation."""
        return self.per_choice * self.choices


def _positive_int(request: Mapping[str, Any], key: str) -> int | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOutputCap(f"'{key}' must be a positive integer", param=key)
    if value < 1:
        raise InvalidOutputCap(f"'{key}' must be at least 1", param=key)
    return value


def output_cap(request: Mapping[str, Any], limit: int, *, max_choices: int = 8) -> OutputCap:
    """The cap for ``request`` under the provider's per-answer ``limit`` and ``max_choices``."""
    if limit < 1:
        raise ValueError("the output limit must be at least 1")
    for key in FOREIGN_LENGTH_FIELDS:
        if key in request:
            raise InvalidOutputCap(
                f"'{key}' is not supported; use 'max_tokens' or 'max_completion_tokens'", param=key
            )
    per_choice = limit
    for key in LENGTH_FIELDS:
        value = _positive_int(request, key)
        if value is not None:
            per_choice = min(per_choice, value)
    choices = 1
    bound = min(max_choices, MAX_CHOICES_HARD)
    for key in CHOICE_FIELDS:
        value = _positive_int(request, key)
        if value is not None:
            if value > bound:
                raise InvalidOutputCap(f"'{key}' may be at most {bound}", param=key)
            choices = max(choices, value)
    return OutputCap(per_choice, choices)


def with_cap(request: dict[str, Any], cap: OutputCap) -> dict[str, Any]:
    """A copy of ``request`` that tells the backend the cap in both length fields."""
    out = dict(request)
    out["max_tokens"] = cap.per_choice
    if "max_completion_tokens" in request:
        out["max_completion_tokens"] = cap.per_choice
    return out
