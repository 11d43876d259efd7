"""What the service sends to its backend for one completion request.

The client's bytes are signed as they came; the backend gets the request the service
read, re-serialised: the allow-listed fields (:mod:`zgserve.service.params`; lists of
text parts joined into one string), the output cap in both length fields
(:mod:`zgserve.common.output_cap`), and for streams ``stream_options.include_usage``.
Re-serialising means the backend cannot read the body differently from the service
(duplicate keys, other encodings, number forms): what was checked and capped is exactly what runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from zgserve.common import jsonsafe
from zgserve.common.errors import BadRequest
from zgserve.common.headers import parse_count
from zgserve.common.output_cap import OutputCap, output_cap, with_cap
from zgserve.service.params import Kind, ParamPolicy, flatten_text_parts


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The provider's bounds on one request."""

    max_request_bytes: int = 16 * 1024 * 1024
    max_output_tokens: int = 4096
    max_choices: int = 8
    # Sent when a request names no model: llama.cpp would otherwise answer with the model's
    # file path, an internal detail, in every answer.
    default_model: str | None = None
    # Embeddings of token-id lists (OpenAI and vLLM take them; llama.cpp answers them with a 500).
    embedding_token_inputs: bool = False


@dataclass(frozen=True, slots=True)
class Outbound:
    """A checked request: ``payload`` as understood, ``body`` as sent upstream."""

    payload: dict[str, Any]
    body: bytes
    cap: OutputCap
    stream: bool


def dumps(obj: Any) -> bytes:
    """Canonical JSON: no spaces, UTF-8; refuses lone surrogates (``"\\ud800"``), not UTF-8."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise jsonsafe.InvalidJson("the request body has a string with a lone surrogate escape") from None


def effective_limit(limits: RequestLimits, header: bytes | str | None) -> int:
    """The per-answer limit: the provider's, lowered by the broker's ``zg-output-limit`` when valid."""
    requested = parse_count(header)
    if requested is None or requested < 1:
        return limits.max_output_tokens
    return min(limits.max_output_tokens, requested)


def _model_name(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text if 0 < len(text) <= 256 and text.isprintable() else None


def prepare(
    kind: Kind,
    body: bytes,
    *,
    policy: ParamPolicy,
    limits: RequestLimits,
    output_limit: bytes | str | None = None,
    upstream_model: bytes | str | None = None,
) -> Outbound:
    """Parse, check and cap ``body``; raises a BadRequest subclass naming what is wrong."""
    parsed = jsonsafe.loads_object(body, max_bytes=limits.max_request_bytes)
    if not isinstance(parsed.get("stream", False), bool | None):
        raise BadRequest("'stream' must be a boolean", param="stream")
    payload = policy.check(kind, parsed)
    cap = output_cap(payload, effective_limit(limits, output_limit), max_choices=limits.max_choices)
    sent = with_cap(flatten_text_parts(payload), cap)
    renamed = _model_name(upstream_model)
    if renamed is not None:
        sent["model"] = renamed  # the catalog's name for the backend (from the broker, not a user)
    elif limits.default_model and not isinstance(sent.get("model"), str):
        sent["model"] = limits.default_model
    stream = payload.get("stream") is True
    if stream:
        options = sent.get("stream_options")
        sent["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return Outbound(payload, dumps(sent), cap, stream)
