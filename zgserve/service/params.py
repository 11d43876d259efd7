"""Which request fields the service forwards to its backend, and the checks on each.

The service stands in front of the backend: the backend only ever sees a JSON object
the service has read in full. Every top-level field is either known (and checked
here for type and range, so that a bad value is a 400 naming the field instead of a
backend crash or 500), added by the provider (``allowed_params``, passed through
unchecked: the provider vouches for it), or refused with ``unsupported_parameter``.

Inputs that backends compile into a sampling grammar are refused by default:
``grammar`` (a malformed one segfaults llama.cpp), ``response_format`` of type
``json_schema``, and a ``tool_choice`` that forces a call (llama.cpp turns the
function's parameter schema into a grammar). A provider enables ``grammar`` by naming
it in ``allowed_params`` and schemas with ``allow_json_schema``.

Length and choice fields (``max_tokens``, ``max_completion_tokens``, ``n``,
``best_of``) are checked by :func:`zgserve.common.output_cap.output_cap`, the one
place that decides how much a request may generate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zgserve.common.errors import BadRequest

Kind = Literal["chat", "completions"]
Check = Callable[[Any, str, "ParamPolicy"], None]

INT64 = 1 << 63
# Token ids past a model's vocabulary are the backend's to refuse (llama.cpp ignores or rejects them).
MAX_TOKEN_ID = (1 << 31) - 1
MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_STOPS = 16
MAX_LOGIT_BIAS = 1024
ROLES = ("system", "developer", "user", "assistant", "tool")
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class UnsupportedParameter(BadRequest):
    code = "unsupported_parameter"


class InvalidParameter(BadRequest):
    code = "invalid_parameter"


@dataclass(frozen=True)
class ParamPolicy:
    """The provider's choices: extra fields passed through, known fields refused, schemas allowed."""

    allowed: frozenset[str] = frozenset()
    refused: frozenset[str] = frozenset()
    allow_json_schema: bool = False

    def check(self, kind: Kind, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``payload`` without null fields, every remaining field allowed and checked."""
        known = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
        out: dict[str, Any] = {}
        for name, value in payload.items():
            if name in self.refused:
                raise UnsupportedParameter(f"'{_shown(name)}' is not supported by this provider", param=name)
            check = known.get(name)
            if check is None and name in OPT_IN and name in self.allowed:
                check = OPT_IN[name]
            if check is not None:
                if value is None:
                    continue  # null is the same as absent in the OpenAI API; backends differ on it
                check(value, name, self)
            elif name not in self.allowed:
                raise UnsupportedParameter(_why_unsupported(kind, name), param=_shown(name))
            out[name] = value
        required = "messages" if kind == "chat" else "prompt"
        if required not in out:
            raise InvalidParameter(f"'{required}' is required", param=required)
        if kind == "completions" and _int_or(out.get("best_of"), 1) < _int_or(out.get("n"), 1):
            raise InvalidParameter("'best_of' must be at least 'n'", param="best_of")
        return out


def _shown(name: str) -> str:
    return name if len(name) <= 64 else name[:64] + "…"


def _why_unsupported(kind: Kind, name: str) -> str:
    shown = _shown(name)
    if name in OPT_IN:
        return f"'{shown}' is refused: the backend compiles it into a grammar (not enabled by this provider)"
    other = COMPLETION_FIELDS if kind == "chat" else CHAT_FIELDS
    if name in other:
        where = "/v1/completions" if kind == "chat" else "/v1/chat/completions"
        return f"'{shown}' is a parameter of {where}, not of this endpoint"
    return f"unsupported parameter '{shown}'"


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _fail(param: str, message: str) -> InvalidParameter:
    return InvalidParameter(f"'{param}' {message}", param=param)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(lo: float, hi: float) -> Check:
    def check(value: Any, param: str, policy: ParamPolicy) -> None:
        if not _is_number(value) or not lo <= value <= hi:
            raise _fail(param, f"must be a number from {lo:g} to {hi:g}")

    return check


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, param: str, policy: ParamPolicy) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _fail(param, f"must be an integer from {lo} to {hi}")

    return check


def boolean(value: Any, param: str, policy: ParamPolicy) -> None:
    if not isinstance(value, bool):
        raise _fail(param, "must be true or false")


def string(value: Any, param: str, policy: ParamPolicy) -> None:
    if not isinstance(value, str):
        raise _fail(param, "must be a string")


def name_string(value: Any, param: str, policy: ParamPolicy) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise _fail(param, "must be a string of 1 to 256 characters")


def by_output_cap(value: Any, param: str, policy: ParamPolicy) -> None:
    """Checked by ``output_cap`` with the provider's limits."""


def _object(value: Any, param: str, keys: frozenset[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(param, "must be an object")
    for key in value:
        if key not in keys:
            raise UnsupportedParameter(f"unsupported field '{param}.{_shown(key)}'", param=f"{param}.{key}")
    for key in required:
        if key not in value:
            raise _fail(f"{param}.{key}", "is required")
    return value


def _list(value: Any, param: str, most: int, *, least: int = 0) -> list[Any]:
    if not isinstance(value, list) or not least <= len(value) <= most:
        raise _fail(param, f"must be a list of {least} to {most} items")
    return value


def token_id(value: Any, param: str, policy: ParamPolicy) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKEN_ID:
        raise _fail(param, f"must be a token id from 0 to {MAX_TOKEN_ID}")


def stop(value: Any, param: str, policy: ParamPolicy) -> None:
    if isinstance(value, str):
        return
    for i, item in enumerate(_list(value, param, MAX_STOPS)):
        string(item, f"{param}[{i}]", policy)


def stream_options(value: Any, param: str, policy: ParamPolicy) -> None:
    options = _object(value, param, frozenset({"include_usage"}))
    if "include_usage" in options:
        boolean(options["include_usage"], f"{param}.include_usage", policy)


def logit_bias(value: Any, param: str, policy: ParamPolicy) -> None:
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise _fail(param, f"must be an object of at most {MAX_LOGIT_BIAS} token ids")
    for key, bias in value.items():
        where = f"{param}.{_shown(key)}"
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise InvalidParameter(f"'{param}' keys must be token ids (decimal digits)", param=where)
        token_id(int(key), where, policy)
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise _fail(where, "must be a number from -100 to 100")


def chat_logprobs(value: Any, param: str, policy: ParamPolicy) -> None:
    boolean(value, param, policy)


def response_format(value: Any, param: str, policy: ParamPolicy) -> None:
    if not isinstance(value, dict):
        raise _fail(param, "must be an object")
    kind = value.get("type")
    if kind in ("text", "json_object"):
        _object(value, param, frozenset({"type"}))
        return
    if kind == "json_schema":
        if not policy.allow_json_schema:
            raise UnsupportedParameter(
                "response_format 'json_schema' is not enabled by this provider "
                "(the backend compiles the schema into a grammar)",
                param=f"{param}.type",
            )
        spec = _object(value, param, frozenset({"type", "json_schema"}), ("json_schema",))
        schema = _object(
            spec["json_schema"],
            f"{param}.json_schema",
            frozenset({"name", "description", "schema", "strict"}),
            ("name",),
        )
        name_string(schema["name"], f"{param}.json_schema.name", policy)
        if "schema" in schema and not isinstance(schema["schema"], dict):
            raise _fail(f"{param}.json_schema.schema", "must be an object")
        return
    raise _fail(f"{param}.type", "must be 'text' or 'json_object'")


def tools(value: Any, param: str, policy: ParamPolicy) -> None:
    for i, tool in enumerate(_list(value, param, MAX_TOOLS)):
        where = f"{param}[{i}]"
        _object(tool, where, frozenset({"type", "function"}), ("type", "function"))
        if tool["type"] != "function":
            raise _fail(f"{where}.type", "must be 'function'")
        function = _object(
            tool["function"],
            f"{where}.function",
            frozenset({"name", "description", "parameters", "strict"}),
            ("name",),
        )
        if not isinstance(function["name"], str) or not _NAME.fullmatch(function["name"]):
            raise _fail(f"{where}.function.name", "must be 1 to 128 letters, digits, '_', '.', ':' or '-'")
        if "description" in function:
            string(function["description"], f"{where}.function.description", policy)
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _fail(f"{where}.function.parameters", "must be an object")
        if "strict" in function:
            boolean(function["strict"], f"{where}.function.strict", policy)


def tool_choice(value: Any, param: str, policy: ParamPolicy) -> None:
    if value in ("none", "auto"):
        return
    if value != "required" and not isinstance(value, dict):
        raise _fail(param, "must be 'none', 'auto', 'required' or a function choice")
    if not policy.allow_json_schema:
        raise UnsupportedParameter(
            "a tool_choice that forces a call is not enabled by this provider "
            "(the backend compiles the function's parameters into a grammar)",
            param=param,
        )
    if isinstance(value, dict):
        _object(value, param, frozenset({"type", "function"}), ("type", "function"))
        function = _object(value["function"], f"{param}.function", frozenset({"name"}), ("name",))
        name_string(function["name"], f"{param}.function.name", policy)


def _content(value: Any, param: str, policy: ParamPolicy) -> None:
    if isinstance(value, str):
        return
    for j, part in enumerate(_list(value, param, MAX_MESSAGES, least=1)):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            raise UnsupportedParameter(f"'{where}': only text parts are supported", param=f"{where}.type")
        _object(part, where, frozenset({"type", "text"}), ("text",))
        string(part["text"], f"{where}.text", policy)


_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content"})


def messages(value: Any, param: str, policy: ParamPolicy) -> None:
    for i, message in enumerate(_list(value, param, MAX_MESSAGES, least=1)):
        where = f"{param}[{i}]"
        _object(message, where, _MESSAGE_KEYS, ("role",))
        role = message["role"]
        if role not in ROLES:
            raise _fail(f"{where}.role", "must be one of " + ", ".join(ROLES))
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise _fail(f"{where}.content", "is required")
        else:
            _content(content, f"{where}.content", policy)
        for key in ("name", "tool_call_id"):
            if key in message:
                name_string(message[key], f"{where}.{key}", policy)
        if "reasoning_content" in message and message["reasoning_content"] is not None:
            string(message["reasoning_content"], f"{where}.reasoning_content", policy)
        if message.get("tool_calls") is not None:
            if role != "assistant":
                raise _fail(f"{where}.tool_calls", "is only for assistant messages")
            _tool_calls(message["tool_calls"], f"{where}.tool_calls", policy)


def _tool_calls(value: Any, param: str, policy: ParamPolicy) -> None:
    for k, call in enumerate(_list(value, param, MAX_TOOLS)):
        where = f"{param}[{k}]"
        _object(call, where, frozenset({"id", "type", "function"}), ("function",))
        if "id" in call:
            name_string(call["id"], f"{where}.id", policy)
        if call.get("type", "function") != "function":
            raise _fail(f"{where}.type", "must be 'function'")
        function = _object(call["function"], f"{where}.function", frozenset({"name", "arguments"}), ("name",))
        name_string(function["name"], f"{where}.function.name", policy)
        if "arguments" in function:
            string(function["arguments"], f"{where}.function.arguments", policy)


def prompt(value: Any, param: str, policy: ParamPolicy) -> None:
    """One prompt: text, or token ids. A list of several prompts is refused: each would get the
    whole output cap, and the cap (so the broker's reservation) counts one prompt."""
    if isinstance(value, str):
        return
    items = _list(value, param, 1 << 20, least=1)
    if all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        for i, item in enumerate(items):
            token_id(item, f"{param}[{i}]", policy)
        return
    if len(items) != 1:
        raise _fail(param, "must be one prompt (a string or a list of token ids), not several")
    if isinstance(items[0], str):
        return
    inner = _list(items[0], f"{param}[0]", 1 << 20, least=1)
    for i, item in enumerate(inner):
        token_id(item, f"{param}[0][{i}]", policy)


def completion_logprobs(value: Any, param: str, policy: ParamPolicy) -> None:
    integer(0, 5)(value, param, policy)


_COMMON: dict[str, Check] = {
    "model": name_string,
    "max_tokens": by_output_cap,
    "max_completion_tokens": by_output_cap,
    "n": by_output_cap,
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "top_k": integer(0, 1 << 20),
    "min_p": number(0, 1),
    "repeat_penalty": number(0.01, 10),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "seed": integer(-INT64, (1 << 64) - 1),
    "stop": stop,
    "stream": boolean,
    "stream_options": stream_options,
    "logit_bias": logit_bias,
    "user": name_string,
}
CHAT_FIELDS: dict[str, Check] = {
    **_COMMON,
    "messages": messages,
    "logprobs": chat_logprobs,
    "top_logprobs": integer(0, 20),
    "response_format": response_format,
    "tools": tools,
    "tool_choice": tool_choice,
}
COMPLETION_FIELDS: dict[str, Check] = {
    **_COMMON,
    "prompt": prompt,
    "best_of": by_output_cap,
    "logprobs": completion_logprobs,
    "suffix": string,
    "echo": boolean,
}
# Known, but forwarded only when the provider names them in ``allowed_params``.
OPT_IN: dict[str, Check] = {"grammar": string}


def flatten_text_parts(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with each message's list of text parts joined into one string.

    Checked messages carry text parts only; llama.cpp's chat templates fail (500) on a
    list, and vLLM joins text parts with newlines itself, so this is what both read.
    """
    chat = payload.get("messages")
    if not isinstance(chat, list) or all(isinstance(m.get("content"), str | None) for m in chat):
        return payload
    flat = [
        {**m, "content": "\n".join(part["text"] for part in m["content"])}
        if isinstance(m.get("content"), list)
        else m
        for m in chat
    ]
    return {**payload, "messages": flat}
