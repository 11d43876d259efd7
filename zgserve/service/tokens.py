"""Token counts from the backend's own tokenizer, for answers whose backend sends no usage.

The backend is asked once which tokenizer endpoint it has:

* ``POST /tokenize`` in the vLLM shape (``{"model", "prompt" | "messages"}`` ->
  ``{"count"}``): vLLM, SGLang and the embedded llama.cpp server, which applies the
  model's chat template exactly as its chat endpoint does;
* ``POST /extras/tokenize`` (plain llama-cpp-python): text only, so chat prompts
  are then counted without the template and the usage is marked ``estimated``.

Streamed completion tokens are not counted here but from the stream's events
(:mod:`zgserve.service.usage`): a model may generate a segmentation other than the
tokenizer's. Only a complete answer without usage has its text tokenized.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)


class TokenCounter:
    """Counts tokens through the backend; every method returns None when it cannot."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> None:
        self._session = session
        self._base = base_url
        self._headers = headers
        self._mode: str | None = None  # "vllm" | "extras" | "none", decided on first use

    @property
    def exact_chat(self) -> bool:
        return self._mode == "vllm"

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        try:
            async with self._session.post(self._base + path, json=payload, headers=self._headers) as resp:
                if resp.status != 200:
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _count_of(data: dict[str, Any] | None) -> int | None:
        if data is None:
            return None
        if isinstance(data.get("count"), int):
            return int(data["count"])
        tokens = data.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    async def _detect(self, model: str | None) -> str:
        if self._mode is None:
            probe: dict[str, Any] = {"prompt": "probe", "add_special_tokens": False}
            if model:
                probe["model"] = model
            if self._count_of(await self._post("/tokenize", probe)) is not None:
                self._mode = "vllm"
            elif self._count_of(await self._post("/extras/tokenize", {"input": "probe"})) is not None:
                self._mode = "extras"
                logger.warning(
                    "backend tokenizer has no chat template endpoint: streamed prompt counts are estimates"
                )
            else:
                self._mode = "none"
                logger.warning("backend has no tokenizer endpoint: streamed usage will be estimated")
        return self._mode

    async def count_text(self, text: str, model: str | None, *, add_special: bool = False) -> int | None:
        """Tokens in ``text`` (no BOS/EOS unless ``add_special``)."""
        if not text:
            return 0
        mode = await self._detect(model)
        if mode == "vllm":
            payload: dict[str, Any] = {"prompt": text, "add_special_tokens": add_special}
            if model:
                payload["model"] = model
            return self._count_of(await self._post("/tokenize", payload))
        if mode == "extras":
            return self._count_of(await self._post("/extras/tokenize", {"input": text}))
        return None

    async def count_chat(self, request: dict[str, Any]) -> tuple[int | None, bool]:
        """Prompt tokens of a chat request with the chat template applied, and whether exact."""
        model = request.get("model") if isinstance(request.get("model"), str) else None
        messages = request.get("messages")
        if not isinstance(messages, list):
            return None, False
        mode = await self._detect(model)
        if mode == "vllm":
            payload: dict[str, Any] = {"messages": messages, "add_generation_prompt": True}
            if model:
                payload["model"] = model
            if request.get("tools"):
                payload["tools"] = request["tools"]
            count = self._count_of(await self._post("/tokenize", payload))
            if count is not None:
                return count, True
        # Without the template: the message texts alone (a lower bound).
        text = "\n".join(_message_text(m) for m in messages)
        return await self.count_text(text, model), False

    async def count_prompt(self, prompt: Any, model: str | None) -> int | None:
        """Prompt tokens of a text-completion request (string, strings or token ids)."""
        if isinstance(prompt, str):
            return await self.count_text(prompt, model, add_special=True)
        if isinstance(prompt, list):
            if all(isinstance(p, int) for p in prompt):
                return len(prompt)
            total = 0
            for part in prompt:
                if isinstance(part, list):
                    total += len(part)
                    continue
                count = await self.count_text(str(part), model, add_special=True)
                if count is None:
                    return None
                total += count
            return total
        return None


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
