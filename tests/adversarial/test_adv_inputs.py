"""Tokens, headers, bodies and query parameters: hostile inputs answer 4xx, never 5xx or a crash.

Every input goes out as raw bytes and is judged by :meth:`Stack.send` (no 5xx, every
answer billed exactly once); each test then checks the log for tracebacks, the process
for a crash, and the chain for overdrafts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.conftest import ADMIN_TOKEN, Stack, Tally, claims, sign_raw
from tests.adversarial.strategies import (
    CHAT_BODY,
    COMPLETION_BODY,
    JSON_VALUES,
    ODD_VALUES,
    TEXT,
    UNICODE_DIGITS,
    encoded,
)
from zgserve.common.tokens import encode_api_key
from zgserve.devnet.network import Devnet

CHAT = "/v1/proxy/chat/completions"
COMPLETIONS = "/v1/proxy/completions"
JSON = ("Content-Type", "application/json")
DEEP = 100_000


def fuzz(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


async def run(stack: Stack, tally: Tally, devnet: Devnet, test: Any) -> None:
    mark = tally.snapshot()
    await asyncio.to_thread(test)
    await stack.after_batch(devnet)
    tally.assert_clean(mark)


# ---- tokens ---------------------------------------------------------------------------------

CLAIM_NAMES = ("address", "provider", "timestamp", "expiresAt", "nonce", "generation", "tokenId")


@st.composite
def hostile_token(draw: st.DrawFn, stack: Stack) -> tuple[str, str]:
    """(how it was made, the Authorization value)."""
    user = stack.users[0]
    kind = draw(st.integers(0, 6))
    if kind == 0:  # one claim replaced, then properly signed: the claims parser sees it
        name = draw(st.sampled_from(CLAIM_NAMES))
        value = draw(ODD_VALUES)
        raw = json.dumps(claims(user, stack.provider.address, **{name: value}), separators=(",", ":"))
        return f"claim {name}={value!r:.60}", "Bearer " + encode_api_key(raw, sign_raw(raw, user.private_key))
    if kind == 1:  # unicode digits in the numeric claims, as strings
        name = draw(st.sampled_from(("timestamp", "expiresAt", "generation", "tokenId")))
        value = draw(UNICODE_DIGITS)
        raw = json.dumps(claims(user, stack.provider.address, **{name: value}), ensure_ascii=False)
        return f"digits {name}={value!r}", "Bearer " + encode_api_key(raw, sign_raw(raw, user.private_key))
    if kind == 2:  # any JSON as the message, signed
        raw = json.dumps(draw(JSON_VALUES))
        return f"message {raw[:60]}", "Bearer " + encode_api_key(raw, sign_raw(raw, user.private_key))
    if kind == 3:  # a valid token with bytes flipped
        token = stack.token()
        i = draw(st.integers(len("Bearer app-sk-"), len(token) - 1))
        ch = draw(st.sampled_from("A/+=_-.|x0\u00e9"))
        return f"flipped at {i}", token[:i] + ch + token[i + 1 :]
    if kind == 4:  # deep or huge messages
        depth = draw(st.sampled_from([64, 1000, DEEP]))
        inner = draw(
            st.sampled_from(["[" * depth, "[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])
        )
        raw = '{"address":' + inner + "}" if draw(st.booleans()) else inner
        return f"deep {depth}", "Bearer " + encode_api_key(raw, "0x" + "11" * 65)
    if kind == 5:  # a signature that is not one
        raw = json.dumps(claims(user, stack.provider.address), separators=(",", ":"))
        sig = draw(
            st.sampled_from(["", "0x", "0x" + "ff" * 65, "0x" + "00" * 65, "٣" * 130, "0x" + "1" * 9999])
        )
        return f"signature {sig[:20]!r}", "Bearer " + encode_api_key(raw, sig)
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer\t", ""]))
    payload = draw(
        st.sampled_from(["app-sk-", "app-sk-%%%", "app-sk-" + base64.b64encode(b"\xff\xfe|x").decode()])
    )
    return f"scheme {scheme!r} {payload!r}", f"{scheme} {payload}"


async def test_tokens_stand_in_backend(fake_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = fake_stack
    body = encoded(CHAT_BODY)

    @fuzz(2200)
    @given(token=hostile_token(stack), where=st.integers(0, 3))
    def one(token: tuple[str, str], where: int) -> None:
        what, value = token
        if where == 0:
            stack.send("POST", CHAT, headers=[("Authorization", value), JSON], body=body, what=what)
        elif where == 1:
            path = f"/v1/user/{stack.users[0].address}/unsettledfee"
            stack.send("GET", path, headers=[("Authorization", value)], what=what)
        elif where == 2:
            path = f"/v1/user/{stack.users[0].address}/settlements"
            stack.send("GET", path, headers=[("Authorization", value)], what=what)
        else:  # the legacy session headers carry the same message, unencoded
            raw = value.partition("app-sk-")[2]
            try:
                message, _, sig = base64.b64decode(raw, validate=True).decode().rpartition("|")
            except ValueError:
                message, sig = raw, "0x"
            headers = [
                ("Address", stack.users[0].address),
                ("Session-Token", message.encode("utf-8", "surrogatepass")),
                ("Session-Signature", sig),
                JSON,
            ]
            stack.send("POST", CHAT, headers=headers, body=body, what="legacy " + what)

    await run(stack, tally, devnet, one)


async def test_depth_bombs_stand_in_backend(fake_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    """100k-deep JSON in a token, a legacy Session-Token header and a body."""
    stack = fake_stack
    user = stack.users[0]

    def bombs() -> None:
        for inner in ("[" * DEEP, '{"a":' * DEEP, "[" * DEEP + "]" * DEEP):
            token = "Bearer " + encode_api_key(inner, sign_raw(inner, user.private_key))
            stack.send(
                "POST",
                CHAT,
                headers=[("Authorization", token), JSON],
                body=encoded(CHAT_BODY),
                what="token bomb",
            )
            legacy = [
                ("Address", user.address),
                ("Session-Token", inner),
                ("Session-Signature", "0x" + "11" * 65),
            ]
            stack.send("POST", CHAT, headers=[*legacy, JSON], body=encoded(CHAT_BODY), what="legacy bomb")
            for path in (CHAT, COMPLETIONS):
                body = b'{"messages":' + inner.encode() + b"}"
                stack.send(
                    "POST",
                    path,
                    headers=[("Authorization", stack.token()), JSON],
                    body=body,
                    what="body bomb",
                )

    await run(stack, tally, devnet, bombs)


# ---- bodies ---------------------------------------------------------------------------------

KNOWN_FIELDS = (
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "best_of", "stream",
    "stream_options", "temperature", "top_p", "top_k", "min_p", "logit_bias", "logprobs", "top_logprobs",
    "stop", "seed", "presence_penalty", "frequency_penalty", "repeat_penalty", "response_format", "tools",
    "tool_choice", "user", "suffix", "echo", "n_predict", "max_new_tokens", "min_tokens", "ignore_eos",
    "grammar", "json_schema", "mirostat", "typical_p", "cache_prompt", "slot_id", "id_slot", "samplers",
)  # fmt: skip


@st.composite
def hostile_body(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(path, how it was made, the body bytes)."""
    path = draw(st.sampled_from([CHAT, COMPLETIONS]))
    base = dict(CHAT_BODY if draw(st.booleans()) else COMPLETION_BODY)
    kind = draw(st.integers(0, 5))
    if kind <= 1:  # a known field with a wrong value
        for _ in range(draw(st.integers(1, 3))):
            base[draw(st.sampled_from(KNOWN_FIELDS))] = draw(ODD_VALUES)
        return path, f"fields {sorted(base)}", encoded(base)
    if kind == 2:  # unknown fields
        extra = draw(st.dictionaries(TEXT.filter(lambda k: k != "fake"), JSON_VALUES, min_size=1, max_size=4))
        return path, "unknown fields", encoded(base | extra)
    if kind == 3:  # any JSON at all
        return path, "any json", encoded(draw(JSON_VALUES))
    if kind == 4:  # another encoding of a valid body, or broken text
        text = json.dumps(base)
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "latin-1"]))
        if draw(st.booleans()):
            return path, f"encoding {codec}", text.encode(codec)
        junk = draw(
            st.sampled_from([b"\xff\xfe", b"\xc0\xae", b"\xed\xa0\x80", b"\x00", b"NaN", b"Infinity"])
        )
        return path, f"junk {junk!r}", text[:-1].encode() + b', "x": ' + junk + b"}"
    # raw number and duplicate-key text the serialiser would never write
    raw = draw(
        st.sampled_from(
            [
                '{"max_tokens": 1' + "0" * 5000 + "}",
                '{"max_tokens": 1e30}',
                '{"max_tokens": -1e400}',
                '{"n": 1' + "0" * 30 + "}",
                '{"max_tokens": 1, "max_tokens": 400}',
                '{"messages": [], "messages": "x"}',
                '{"max_tokens": NaN}',
                '{"temperature": Infinity}',
                '{"max_tokens": 1.0}',
                '{"max_tokens": "٣"}',
                '{"max_tokens": "²"}',
                "",
                " ",
                "{",
                "null",
                "[]",
                '"x"',
            ]
        )
    )
    merged = raw if not raw.startswith("{") or raw == "{" else raw[:-1] + ", " + json.dumps(base)[1:]
    return path, f"raw {raw[:40]}", merged.encode()


async def test_bodies_stand_in_backend(fake_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = fake_stack

    @fuzz(3000)
    @given(
        case=hostile_body(),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "", "application/json; charset=utf-16"]
        ),
    )
    def one(case: tuple[str, str, bytes], content_type: str) -> None:
        path, what, body = case
        headers = [("Authorization", stack.token())]
        if content_type:
            headers.append(("Content-Type", content_type))
        stack.send("POST", path, headers=headers, body=body, what=f"{what} {body[:200]!r}")

    await run(stack, tally, devnet, one)


LENGTH_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "n", "best_of"})


@st.composite
def wrong_field_body(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """A valid request with one to three known fields set to odd values; short answers only."""
    path = draw(st.sampled_from([CHAT, COMPLETIONS]))
    base = dict(CHAT_BODY if path == CHAT else COMPLETION_BODY)
    for _ in range(draw(st.integers(1, 3))):
        base[draw(st.sampled_from(KNOWN_FIELDS))] = draw(ODD_VALUES)
    if not LENGTH_FIELDS & base.keys() - {"max_tokens"}:
        base["max_tokens"] = 2  # the point is the backend's reaction, not a long generation
    return path, f"fields {sorted(base)}", encoded(base)


async def test_wrong_fields_against_the_real_backend(
    llama_stack: Stack, tally: Tally, devnet: Devnet
) -> None:
    # The fake backend accepts almost anything; llama.cpp answers wrong types with 422 or 500
    # (or crashes): everything it would refuse must be refused in front of it, as a 4xx.
    stack = llama_stack

    @fuzz(400)
    @given(case=wrong_field_body())
    def one(case: tuple[str, str, bytes]) -> None:
        path, what, body = case
        headers = [("Authorization", stack.token()), JSON]
        stack.send("POST", path, headers=headers, body=body, what=f"llama {what} {body[:200]!r}")

    await run(stack, tally, devnet, one)


@st.composite
def hostile_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = st.sampled_from(
        [
            "Accept-Encoding", "Content-Encoding", "Origin", "X-Forwarded-For", "Forwarded", "Cookie",
            "Address", "Session-Token", "Session-Signature", "ZG-Res-Key", "ZG-Output-Limit",
            "ZG-Prompt-Tokens", "X-Request-Id", "Expect", "Accept", "Authorization2", "Upgrade",
        ]
    )  # fmt: skip
    values = st.one_of(
        UNICODE_DIGITS, st.sampled_from(["gzip", "br", "deflate", "*", "100-continue", "1" * 30, "-1", "0"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    )  # fmt: skip
    return draw(st.lists(st.tuples(names, values), min_size=1, max_size=4))


async def test_headers_stand_in_backend(fake_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = fake_stack

    @fuzz(600)
    @given(extra=hostile_headers(), stream=st.booleans())
    def one(extra: list[tuple[str, str]], stream: bool) -> None:
        body = encoded(CHAT_BODY | {"stream": stream})
        headers = [("Authorization", stack.token()), JSON, *extra]
        stack.send("POST", CHAT, headers=headers, body=body, what=f"headers {extra}")

    await run(stack, tally, devnet, one)


# ---- query parameters of user and admin routes ------------------------------------------------

QUERY_VALUES = st.one_of(
    UNICODE_DIGITS,
    st.sampled_from(
        ["-1", "0", "1", "1" * 25, "9" * 5000, "1e3", "0x10", " 1", "true", "ＴＲＵＥ", "", "%FF", "%00"]
    ),
    st.text(max_size=20).map(lambda t: urllib.parse.quote(t, safe="")),
    st.sampled_from(["2024-01-01", "2024-13-45T99:99", "٢٠٢٤-٠١-٠١", "asc", "desc", "DESC"]),
)
ADMIN_PATHS = ("/v1/user", "/v1/user/{user}", "/v1/request", "/v1/settlement", "/v1/service")
USER_PATHS = (
    "/v1/user/{user}/unsettledfee",
    "/v1/user/{user}/settlements",
    "/v1/user/{user}/settlements/{nonce}",
)
PARAMS = (
    "offset",
    "limit",
    "order",
    "settled",
    "processed",
    "since",
    "until",
    "user",
    "responseId",
    "status",
    "nonce",
)


async def test_query_params_stand_in_backend(fake_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = fake_stack
    me = stack.users[0].address
    users = st.one_of(st.sampled_from([me, me.lower(), "0x", "0x" + "g" * 40, "٠x" + "1" * 40]), QUERY_VALUES)

    @fuzz(1800)
    @given(
        path=st.sampled_from(ADMIN_PATHS + USER_PATHS),
        user=users,
        nonce=QUERY_VALUES,
        query=st.lists(st.tuples(st.sampled_from(PARAMS), QUERY_VALUES), max_size=4),
    )  # fmt: skip
    def one(
        path: str,
        user: str,
        nonce: str,
        query: list[tuple[str, str]],
    ) -> None:
        target = path.format(user=user, nonce=nonce) + (
            "?" + "&".join(f"{k}={v}" for k, v in query) if query else ""
        )
        admin = path in ADMIN_PATHS
        auth = f"Bearer {ADMIN_TOKEN}" if admin else stack.token()
        stack.send("GET", target, headers=[("Authorization", auth)], what=f"GET {target[:300]}")

    await run(stack, tally, devnet, one)
