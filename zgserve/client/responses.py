"""Checking one answer: its signature, and that the signature covers the bytes actually exchanged.

The SDK's ``processResponse`` only recovers the signer of the provider's ``text``; it
never compares ``text`` with the content (spec §6). Here both are checked, with the
verifier of :mod:`zgserve.client.verify`: the two hashes in ``text`` must be those of
the bytes this client sent and received (:class:`~zgserve.client.openai_client.Exchange`),
and the signature over ``text`` must recover to the service's on-chain signer. The
assistant's text and the usage are read from those same bytes, so what is shown is
what was signed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from zgserve.client.openai_client import Exchange
from zgserve.client.provider import SignatureRecord
from zgserve.client.verify import Verification, verify_signature
from zgserve.common.sse import SSEParser


def check_exchange(exchange: Exchange, record: SignatureRecord, signer: str) -> Verification:
    """Check ``record`` (from the provider) against ``exchange`` (what this client saw).

    ``verified`` is true only if the answer was complete and successful, the signed
    hashes match its bytes, and the signature recovers to ``signer``.
    """
    result = Verification()
    result.add("chat id", bool(exchange.chat_id), exchange.chat_id or "the response carries no id")
    result.add("HTTP status 200", exchange.status == 200, str(exchange.status))
    result.add(
        "whole response received",
        exchange.complete,
        f"{len(exchange.response_body)} bytes" + ("" if exchange.complete else ", stream abandoned"),
    )
    return verify_signature(
        exchange.request_body, exchange.response_body, asdict(record), expected_address=signer, into=result
    )


def _events(body: bytes) -> list[dict[str, Any]]:
    parser = SSEParser()
    events = parser.feed(body)
    tail = parser.close()
    if tail is not None:
        events.append(tail)
    out: list[dict[str, Any]] = []
    for event in events:
        if event.data is None or event.is_done:
            continue
        try:
            payload = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(payload, dict):
            out.append(payload)
    return out


def answer_text(exchange: Exchange) -> str:
    """The assistant's text, read from the exact response bytes (stream deltas joined)."""
    if exchange.streamed:
        parts: list[str] = []
        for event in _events(exchange.response_body):
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
                elif isinstance(choice.get("text"), str):
                    parts.append(choice["text"])
        return "".join(parts)
    try:
        body = json.loads(exchange.response_body)
        choice = body["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    message = choice.get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    if text is None:
        text = choice.get("text")
    return text if isinstance(text, str) else ""


def usage(exchange: Exchange) -> dict[str, int] | None:
    """``usage`` from the response bytes (the last stream event that has one)."""
    found: Any = None
    if exchange.streamed:
        for event in _events(exchange.response_body):
            if isinstance(event.get("usage"), dict):
                found = event["usage"]
    else:
        try:
            found = json.loads(exchange.response_body).get("usage")
        except (ValueError, AttributeError):
            found = None
    if not isinstance(found, dict):
        return None
    return {k: int(v) for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)}
