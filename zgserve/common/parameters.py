"""The chat-completion parameters a zgserve verifiable service forwards by default.

Advertised in the broker's ``/v1/models`` (``supported_parameters``, the name routers
read). It must follow the service's own allow-list (``zgserve.service.params``,
``CHAT_FIELDS``): the broker does not import the service's internals, so a test keeps
the two in step. Message plumbing (``model``, ``messages``, ``stream``,
``stream_options``, ``user``) is not a "parameter" in this sense and is left out.
"""

from __future__ import annotations

SUPPORTED_CHAT_PARAMETERS: tuple[str, ...] = (
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
)
