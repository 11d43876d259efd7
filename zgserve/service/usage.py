"""Usage for answers whose backend reports none.

* Prompt tokens: counted with the backend's tokenizer (:class:`TokenCounter`: the
  embedded model's own ``/tokenize``, chat template applied) while the request is on
  its way upstream, so that the count is known before the first byte of a stream is
  sent (header ``zg-prompt-tokens``).
* Completion tokens of a stream: the number of stream events that carry a generated
  piece (``content``, ``reasoning_content``, ``tool_calls``, or ``text``), per
  choice. llama.cpp sends one event per generated token, so this is what was
  generated. Tokenizing the text again is not: a model can generate a segmentation
  other than the tokenizer's (the same answer re-tokenized counted 31 tokens where 92
  were generated).
* Completion tokens of a complete answer without usage: the text tokenized, the only
  count left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zgserve.service.tokens import TokenCounter


@dataclass(frozen=True, slots=True)
class PromptCount:
    """Prompt tokens (None when they could not be counted) and whether the count is exact."""

    tokens: int | None
    exact: bool


async def count_prompt(counter: TokenCounter, payload: dict[str, Any], timeout_s: float) -> PromptCount:
    """The prompt tokens of ``payload``; gives up (None) after ``timeout_s``."""
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    try:
        async with asyncio.timeout(timeout_s):
            if "messages" in payload:
                tokens, exact = await counter.count_chat(payload)
                return PromptCount(tokens, exact and tokens is not None)
            tokens = await counter.count_prompt(payload.get("prompt"), model)
            return PromptCount(tokens, tokens is not None)
    except TimeoutError:
        return PromptCount(None, False)


def _is_piece(delta: dict[str, Any]) -> bool:
    for key in ("content", "reasoning_content"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return True
    calls = delta.get("tool_calls")
    return isinstance(calls, list) and bool(calls)


def generated_tokens(datas: Iterable[bytes]) -> int:
    """Stream events that carry a generated piece, counted once per choice they carry it for."""
    total = 0
    for data in datas:
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                total += _is_piece(delta)
            else:
                text = choice.get("text")
                total += isinstance(text, str) and bool(text)
    return total


def usage_object(prompt: PromptCount, completion: int, *, completion_exact: bool = True) -> dict[str, Any]:
    """An OpenAI usage object; ``estimated`` is set when either count may be off."""
    tokens = prompt.tokens or 0
    usage: dict[str, Any] = {
        "prompt_tokens": tokens,
        "completion_tokens": completion,
        "total_tokens": tokens + completion,
    }
    if not (prompt.exact and completion_exact):
        usage["estimated"] = True
    return usage


async def complete_usage(
    counter: TokenCounter, payload: dict[str, Any], answer: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Usage for a complete answer that has none: the prompt and each choice's text tokenized."""
    prompt = await count_prompt(counter, payload, timeout_s)
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    choices = [c for c in answer.get("choices") or [] if isinstance(c, dict)]
    completion, exact = 0, True
    for choice in choices:
        message = choice.get("message")
        text = message_text(message) if isinstance(message, dict) else str(choice.get("text") or "")
        count = await counter.count_text(text, model)
        if count is None:
            completion, exact = len(choices), False
            break
        completion += count
    return usage_object(prompt, completion, completion_exact=exact)


def message_text(message: dict[str, Any]) -> str:
    """The generated text of a message: content, reasoning and tool calls."""
    parts = [message.get("content"), message.get("reasoning_content")]
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts += [function.get("name"), function.get("arguments")]
    return "".join(p for p in parts if isinstance(p, str))
