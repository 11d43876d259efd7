"""What the service sends upstream: allow-listed, checked, capped, re-serialised (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zgserve.common.errors import BadRequest, PayloadTooLarge
from zgserve.service.outbound import Outbound, RequestLimits, prepare
from zgserve.service.params import Kind, ParamPolicy

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
LIMITS = RequestLimits(max_request_bytes=4096, max_output_tokens=64, max_choices=4)


def chat(body: dict[str, Any] | bytes, policy: ParamPolicy | None = None, **kw: Any) -> Outbound:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return prepare("chat", raw, policy=policy or ParamPolicy(), limits=LIMITS, **kw)


def test_the_cap_goes_upstream_in_the_field_the_backend_honours() -> None:
    # Defect 1: the broker reserved from max_completion_tokens while llama.cpp honoured max_tokens.
    sent = json.loads(chat({**CHAT, "max_completion_tokens": 1, "max_tokens": 400}).body)
    assert sent["max_tokens"] == 1
    assert sent["max_completion_tokens"] == 1
    assert json.loads(chat(CHAT).body)["max_tokens"] == 64
    assert json.loads(chat({**CHAT, "max_tokens": 10_000}).body)["max_tokens"] == 64
    assert json.loads(chat(CHAT, output_limit=b"7").body)["max_tokens"] == 7
    assert json.loads(chat(CHAT, output_limit=b"70000").body)["max_tokens"] == 64
    for junk in (b"", b"-1", b"0", b"1e3", b"\xd9\xa3"):
        assert json.loads(chat(CHAT, output_limit=junk).body)["max_tokens"] == 64


def test_upstream_bytes_are_canonical_and_streams_ask_for_usage() -> None:
    raw = b'{ "messages" : [{"role":"user","content":"caf\\u00e9"}], "stream": true, "temperature": null }'
    out = chat(raw)
    assert out.stream
    assert (
        out.body
        == (
            '{"messages":[{"role":"user","content":"café"}],"stream":true,'
            '"max_tokens":64,"stream_options":{"include_usage":true}}'
        ).encode()
    )
    parts = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 2}]}
    assert json.loads(chat(parts).body)["messages"][0]["content"] == "a\na"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [], "messages": []}',  # duplicate keys: two parsers, two requests
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',  # lone surrogate
        '{"messages": [{"role": "user", "content": "x"}]}'.encode("utf-16"),
        b"[" * 1000 + b"]" * 1000,
        b'{"stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
        b"[]",
        b"not json",
    ],
)
def test_bodies_the_parser_must_not_trust(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        chat(raw)
    with pytest.raises(PayloadTooLarge):
        chat(b" " * 5000)


BAD: list[tuple[Kind, dict[str, Any], str, str]] = [
    ("chat", {"messages": "x"}, "messages", "invalid_parameter"),
    ("chat", {"messages": []}, "messages", "invalid_parameter"),
    ("chat", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_parameter"),
    ("chat", {"messages": ["x"]}, "messages[0]", "invalid_parameter"),
    ("chat", {"model": "m"}, "messages", "invalid_parameter"),
    ("chat", {**CHAT, "logit_bias": {"abc": 1}}, "logit_bias.abc", "invalid_parameter"),
    ("chat", {**CHAT, "logit_bias": {"5": 1000}}, "logit_bias.5", "invalid_parameter"),
    ("chat", {**CHAT, "logit_bias": {"99999999999": 1}}, "logit_bias.99999999999", "invalid_parameter"),
    ("chat", {**CHAT, "top_k": -5}, "top_k", "invalid_parameter"),
    ("chat", {**CHAT, "max_tokens": 1e30}, "max_tokens", "invalid_output_limit"),
    ("chat", {**CHAT, "max_tokens": 0}, "max_tokens", "invalid_output_limit"),
    ("chat", {**CHAT, "n": 5}, "n", "invalid_output_limit"),
    ("chat", {**CHAT, "temperature": "hot"}, "temperature", "invalid_parameter"),
    ("chat", {**CHAT, "temperature": 3}, "temperature", "invalid_parameter"),
    ("chat", {**CHAT, "repeat_penalty": 0}, "repeat_penalty", "invalid_parameter"),
    ("chat", {**CHAT, "seed": 1 << 70}, "seed", "invalid_parameter"),
    ("chat", {**CHAT, "stop": [1]}, "stop[0]", "invalid_parameter"),
    ("chat", {**CHAT, "grammar": "root ::= [a"}, "grammar", "unsupported_parameter"),
    ("chat", {**CHAT, "n_predict": 5}, "n_predict", "unsupported_parameter"),
    ("chat", {**CHAT, "mirostat": 2}, "mirostat", "unsupported_parameter"),
    ("chat", {**CHAT, "prompt": "x"}, "prompt", "unsupported_parameter"),
    (
        "chat",
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.type",
        "unsupported_parameter",
    ),
    (
        "chat",
        {**CHAT, "response_format": {"type": "json_object", "schema": {}}},
        "response_format.schema",
        "unsupported_parameter",
    ),
    ("chat", {**CHAT, "tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    (
        "chat",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "a b"}}]},
        "tools[0].function.name",
        "invalid_parameter",
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].type",
        "unsupported_parameter",
    ),
    (
        "chat",
        {**CHAT, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        "invalid_parameter",
    ),
    ("completions", CHAT, "messages", "unsupported_parameter"),
    ("completions", {"prompt": 5}, "prompt", "invalid_parameter"),
    ("completions", {"prompt": ["a", "b"]}, "prompt", "invalid_parameter"),
    ("completions", {"prompt": [1, -2]}, "prompt[1]", "invalid_parameter"),
    ("completions", {"prompt": "x", "best_of": 1, "n": 2}, "best_of", "invalid_parameter"),
    ("completions", {"prompt": "x", "logprobs": True}, "logprobs", "invalid_parameter"),
]


@pytest.mark.parametrize(("kind", "body", "param", "code"), BAD)
def test_bad_fields_are_named(kind: Kind, body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        prepare(kind, json.dumps(body).encode(), policy=ParamPolicy(), limits=LIMITS)
    assert (refused.value.param, refused.value.code) == (param, code)
    assert len(refused.value.message) < 300


def test_the_provider_chooses_what_passes() -> None:
    policy = ParamPolicy(allowed=frozenset({"grammar", "fake"}), refused=frozenset({"seed"}))
    sent = json.loads(chat({**CHAT, "grammar": 'root ::= "a"', "fake": {"x": 1}}, policy).body)
    assert sent["grammar"]
    assert sent["fake"] == {"x": 1}
    with pytest.raises(BadRequest, match="not supported by this provider"):
        chat({**CHAT, "seed": 1}, policy)
    schemas = ParamPolicy(allow_json_schema=True)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert json.loads(chat({**CHAT, "response_format": fmt}, schemas).body)["response_format"] == fmt
    good = {
        **CHAT,
        "temperature": 0,
        "top_p": 0.5,
        "top_k": 40,
        "min_p": 0.1,
        "repeat_penalty": 1.1,
        "seed": -1,
        "stop": ["\n"],
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"15": -100},
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "user": "u1",
    }
    assert chat(good).payload == good
    text = {"prompt": [[1, 2, 3]], "best_of": 2, "n": 2, "echo": True, "suffix": "x", "logprobs": 2}
    assert (
        prepare("completions", json.dumps(text).encode(), policy=ParamPolicy(), limits=LIMITS).cap.choices
        == 2
    )


def test_a_request_without_a_model_names_the_served_one() -> None:
    # llama.cpp answers a request without "model" with the model's file path (an internal detail).
    limits = RequestLimits(max_output_tokens=64, default_model="SmolLM2-135M-Instruct")
    bare = json.dumps({"messages": CHAT["messages"]}).encode()
    sent = json.loads(prepare("chat", bare, policy=ParamPolicy(), limits=limits).body)
    assert sent["model"] == "SmolLM2-135M-Instruct"
    named = json.loads(prepare("chat", json.dumps(CHAT).encode(), policy=ParamPolicy(), limits=limits).body)
    assert named["model"] == "m"
