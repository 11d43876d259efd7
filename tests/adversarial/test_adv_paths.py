"""Path variants: no spelling of a route bills differently from the route, and only the route table answers.

Every request target goes out byte for byte (a raw socket): dot segments, percent-encoded
letters, dots and slashes, double and trailing slashes, case, semicolons, backslashes, and
encoded ``?`` and ``#``. Beyond the per-input invariants (no 5xx, every answer billed
exactly once), a target whose path is not exactly one of the broker's routes must be
refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.conftest import Stack, Tally
from tests.adversarial.strategies import (
    ANONYMOUS,
    BILLED,
    body_for,
    canonical_targets,
    encoded,
    path_part,
    path_variant,
)
from zgserve.devnet.network import Devnet

FUZZ = settings(
    max_examples=2500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
JSON = ("Content-Type", "application/json")


def signature_id(stack: Stack) -> str:
    """The id of one real, billed answer (so that the signature route has something to serve)."""
    reply = stack.send(
        "POST",
        BILLED[0],
        headers=[("Authorization", stack.token()), JSON],
        body=encoded(body_for(BILLED[0])),
    )
    assert reply.status == 200, reply.body[:300]
    key = reply.header("zg-res-key")
    assert key
    return key


def attack(stack: Stack, method: str, target: str, canonical: set[str], *, token: bool, what: str) -> None:
    headers = [("Authorization", stack.token())] if token else []
    body = encoded(body_for(target)) if method == "POST" else b""
    reply = stack.send(method, target, headers=[*headers, JSON], body=body, what=f"{what}: {method} {target}")
    if path_part(target) not in canonical and 200 <= reply.status < 400:
        stack.tally.add("non_canonical_accepted", f"{reply.status} for {method} {target}")


async def test_path_variants_stand_in_backend(fake_stack: Stack, tally: Tally, devnet: Devnet) -> None:
    stack = fake_stack
    mark = tally.snapshot()
    sid = signature_id(stack)
    canonical = canonical_targets(sid)
    bases = [*BILLED, *ANONYMOUS[:2], ANONYMOUS[2].format(id=sid)]

    @FUZZ
    @given(data=st.data(), base=st.sampled_from(bases), token=st.booleans())
    def one(data: st.DataObject, base: str, token: bool) -> None:
        target = data.draw(path_variant(base))
        method = "POST" if base in BILLED else "GET"
        attack(stack, method, target, canonical, token=token or base in BILLED, what="variant")

    await asyncio.to_thread(one)
    await stack.after_batch(devnet)
    tally.assert_clean(mark)


# Reproduced by hand before the fix: each answered (billed routes: a signed answer, no fee record).
KNOWN = [
    "/v1/proxy/./chat/completions",
    "/v1/proxy/chat/completions/",
    "/v1/proxy/%2e/chat/completions",
    "/v1/proxy/x/../chat/completions",
    "/v1/proxy/chat/completions%2F",
    "/v1/proxy/chat/completions%3Fx=1",
    "/v1/proxy/chat/completions%23x",
    "/v1/proxy//chat/completions",
    "/v1/proxy/chat//completions",
    "/v1/proxy/chat%2Fcompletions",
    "/v1/proxy/%63hat/completions",
    "/v1/proxy/./completions",
    "/v1/proxy/completions/",
    "/v1/proxy/signature/../../health",
    "/v1/proxy/signature/%2e%2e/%2e%2e/health",
    "/v1/proxy/models/../chat/completions",
    "/v1/proxy/attestation/report/../../chat/completions",
]


@pytest.mark.parametrize("target", KNOWN)
async def test_known_path_escapes_stand_in_backend(
    fake_stack: Stack, tally: Tally, devnet: Devnet, target: str
) -> None:
    stack = fake_stack
    mark = tally.snapshot()
    canonical = canonical_targets("none")
    method = "POST" if "completions" in target else "GET"
    for token in (True, False):
        attack(stack, method, target, canonical, token=token, what="known")
    await stack.after_batch(devnet)
    tally.assert_clean(mark)


async def test_canonical_routes_still_answer_stand_in_backend(fake_stack: Stack, devnet: Devnet) -> None:
    """The control: the route table itself works (so that the refusals above mean something)."""
    stack = fake_stack
    for path in BILLED:
        reply = stack.send(
            "POST", path, headers=[("Authorization", stack.token()), JSON], body=encoded(body_for(path))
        )
        assert reply.status == 200, reply.body[:300]
        assert stack.records_for(reply.header("zg-res-key") or "") == 1
    sid = signature_id(stack)
    for path in (*ANONYMOUS[:2], ANONYMOUS[2].format(id=sid) + "?model=fake-model"):
        reply = stack.send("GET", path)
        assert reply.status == 200, (path, reply.body[:300])
        json.loads(reply.body)
