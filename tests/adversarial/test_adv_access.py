"""Access rules: revoked tokens, admin CORS, metrics, schemathesis against the published OpenAPI document."""

from __future__ import annotations

import asyncio
import json

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.adversarial.conftest import ADMIN_TOKEN, Stack, Tally
from tests.adversarial.rawhttp import Reply
from zgserve.devnet.network import Devnet

EVIL = ("Origin", "https://evil.example")


async def test_revoked_token_reads_nothing_stand_in_backend(
    fake_stack: Stack, tally: Tally, devnet: Devnet
) -> None:
    stack = fake_stack
    user = stack.users[1]
    token = stack.token(1, tokenId=7)
    me = f"/v1/user/{user.address}"
    routes = [("GET", me + "/unsettledfee"), ("GET", me + "/settlements"), ("GET", me + "/settlements/1")]
    for method, path in routes:
        reply = stack.send(method, path, headers=[("Authorization", token)])
        assert reply.status in (200, 404), (path, reply.status, reply.body[:200])
    await devnet.chain.inference(devnet.chain.wallet(user.private_key)).revoke_token(
        stack.provider.address, 7
    )
    await asyncio.sleep(1.2)  # past auth.accountCacheSeconds
    for method, path in [*routes, ("POST", "/v1/proxy/chat/completions")]:
        body = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}' if method == "POST" else b""
        reply = stack.send(
            method, path, headers=[("Authorization", token), ("Content-Type", "application/json")], body=body
        )
        if reply.status not in (401, 403):
            tally.add("access_leaks", f"revoked API key: {reply.status} for {method} {path}")
    mark = tally.snapshot()
    await stack.after_batch(devnet)
    tally.assert_clean(mark)
    assert not [e for e in tally.examples["access_leaks"] if "revoked" in e], tally.examples["access_leaks"]


def _cors(reply: Reply) -> str | None:
    return reply.header("access-control-allow-origin")


async def test_admin_routes_are_not_for_browsers_stand_in_backend(fake_stack: Stack, tally: Tally) -> None:
    stack = fake_stack
    leaks = []
    for path in ("/v1/user", "/v1/request", "/v1/settlement", "/v1/service"):
        admin = ("Authorization", f"Bearer {ADMIN_TOKEN}")
        get = stack.send("GET", path, headers=[admin, EVIL])
        pre = stack.send(
            "OPTIONS",
            path,
            headers=[
                EVIL,
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        )
        if _cors(get) or _cors(pre):
            leaks.append(f"CORS allows {EVIL[1]} on admin {path}: {_cors(get)!r} / {_cors(pre)!r}")
    for leak in leaks:
        tally.add("access_leaks", leak)
    assert not leaks


async def test_metrics_need_the_admin_token_stand_in_backend(fake_stack: Stack, tally: Tally) -> None:
    stack = fake_stack
    reply = stack.send("GET", "/metrics")
    if reply.status not in (401, 403):
        tally.add("access_leaks", f"GET /metrics without the admin token: {reply.status}")
    assert reply.status in (401, 403), reply.body[:200]
    assert stack.send("GET", "/metrics", headers=[("Authorization", f"Bearer {ADMIN_TOKEN}")]).status == 200


async def test_schemathesis_against_openapi_stand_in_backend(
    fake_stack: Stack, tally: Tally, devnet: Devnet
) -> None:
    """Schemathesis reads ``/v1/openapi.json`` from the live broker and generates calls of every operation."""
    stack = fake_stack
    mark = tally.snapshot()
    doc = stack.send("GET", "/v1/openapi.json")
    assert doc.status == 200, doc.body[:300]
    assert json.loads(doc.body)["openapi"].startswith("3.")

    def run() -> None:
        schema = schemathesis.openapi.from_url(stack.url + "/v1/openapi.json")
        strategy = schema.as_strategy(
            schemathesis.GenerationMode.POSITIVE, headers={"Authorization": stack.token()}
        ) | schema.as_strategy(schemathesis.GenerationMode.NEGATIVE, headers={"Authorization": stack.token()})

        @settings(
            max_examples=1200,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case: schemathesis.Case) -> None:
            tally.add("inputs")
            what = f"schemathesis {case.method} {case.formatted_path} {str(case.body)[:160]}"
            try:
                response = case.call(base_url=stack.url, timeout=30)
            except Exception as exc:  # the transport's view of a dead or silent server
                if not stack.alive():
                    stack.revive(what)
                else:
                    tally.add("hangs", f"{type(exc).__name__} for {what}")
                return
            headers = {k.lower(): v[-1] if isinstance(v, list) else v for k, v in response.headers.items()}
            stack.judge(Reply(response.status_code, headers, response.content), what)

        one()

    await asyncio.to_thread(run)
    await stack.after_batch(devnet)
    tally.assert_clean(mark)
