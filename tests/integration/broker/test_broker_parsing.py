"""Client input that once crashed the broker or answered 500: now a 400/401 in the OpenAI shape.

* A JSON value nested 100k deep (in a token, a legacy ``Session-Token``, an admin body)
  overflowed the C stack under py_ecc's recursion limit: the process died. It runs
  here as a real ``zgserve broker`` process that must still answer afterwards.
* Numeric token claims in Unicode digits ("²" raised in ``int()``), out-of-range
  numbers, long nonces.
* Query and path parameters in Unicode digits or too long for ``int()``/the database.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from tests.integration.broker.processes import broker_process, process_config
from zgserve.broker.app import BrokerDeps
from zgserve.broker.auth import token_digest_message
from zgserve.broker.core import UnsettledReport
from zgserve.common.signing import Signer, eip191_digest
from zgserve.devnet.network import Devnet

DEEP = 100_000
ADMIN = {"Authorization": "Bearer s3cret"}


def code(payload: dict[str, Any]) -> str:
    return str(payload["error"]["code"])


def signed_token(user_key: str, **claims: Any) -> str:
    """An ``Authorization`` header over claims of the test's choosing, validly signed."""
    signer = Signer.from_hex(user_key)
    now = int(time.time() * 1000)
    body: dict[str, Any] = {
        "address": signer.address,
        "timestamp": now,
        "expiresAt": now + 3_600_000,
        "nonce": "n" * 32,
        "generation": 0,
        "tokenId": 255,
    }
    body.update(claims)
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    signature = signer.sign_digest(eip191_digest(token_digest_message(raw)))
    return "Bearer app-sk-" + base64.b64encode(f"{raw}|{signature}".encode()).decode()


async def test_deep_json_does_not_kill_the_broker_process(
    devnet: Devnet, deployment_file: Path, service_url: str, tmp_path: Path
) -> None:
    deep = b"[" * DEEP + b"]" * DEEP
    user = Signer.generate().address
    provider = await devnet.new_account()
    config = process_config(
        service_url=service_url,
        deployment_file=deployment_file,
        private_key=provider.private_key,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/broker.db",
        key_file=tmp_path / "tee.json",
    )
    async with broker_process(config, tmp_path) as broker:
        url, proc = broker.url, broker.proc
        async with aiohttp.ClientSession() as s:
            in_token = "Bearer app-sk-" + base64.b64encode(deep + b"|0x00").decode()
            legacy = {"Address": user, "Session-Token": deep.decode(), "Session-Signature": "0x00"}
            attempts: list[tuple[str, str, dict[str, str], bytes | None]] = [
                ("POST", "/v1/proxy/chat/completions", {"Authorization": in_token}, None),
                ("POST", "/v1/proxy/chat/completions", legacy, None),
                ("GET", f"/v1/user/{user}/unsettledfee", {"Authorization": in_token}, None),
                ("GET", f"/v1/user/{user}/unsettledfee", legacy, None),
                ("GET", f"/v1/user/{user}/settlements", legacy, None),
                ("POST", "/v1/settle", {"Content-Type": "application/json"}, deep),
                (
                    "POST",
                    "/v1/service",
                    {"Content-Type": "application/json"},
                    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
                ),
            ]
            for method, path, headers, body in attempts:
                async with s.request(method, url + path, headers=headers, data=body) as resp:
                    payload = await resp.json(content_type=None)
                    assert resp.status in (400, 401), (path, resp.status, payload)
                    assert set(payload["error"]) == {"message", "type", "param", "code"}
                assert proc.returncode is None, f"the broker died on {method} {path}"
            async with s.get(url + "/health") as resp:
                assert resp.status == 200
        assert proc.returncode is None


HOSTILE_CLAIMS: list[dict[str, Any]] = [
    {"tokenId": "²"},  # was a 500: "²".isdigit() but int("²") raises
    {"timestamp": "١٢"},  # Arabic-Indic digits
    {"expiresAt": "９９９９９９９９９９９９９"},  # fullwidth
    {"generation": "9" * 5000},  # past int()'s digit limit
    {"generation": 2**256},
    {"expiresAt": 2**53},
    {"tokenId": 256},
    {"nonce": "x" * 65},
    {"nonce": 12},
    {"provider": "0x" + "٠" * 40},
]


async def test_hostile_claims_are_401(start_broker: StartBroker, funded_user: FundedUser) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        provider = broker.provider.address
        user = await funded_user(provider)
        for claims in HOSTILE_CLAIMS:
            auth = signed_token(user.private_key, **({"provider": provider} | claims))
            for method, path in [
                ("POST", "/v1/proxy/chat/completions"),
                ("GET", f"/v1/user/{user.address}/unsettledfee"),
                ("GET", f"/v1/user/{user.address}/settlements"),
            ]:
                async with s.request(
                    method, broker.url + path, headers={"Authorization": auth}, json={}
                ) as resp:
                    payload = await resp.json()
                    assert resp.status == 401, (claims, path, payload)
                    assert code(payload) in ("invalid_token", "token_too_large"), payload
        # The same user with a clean token gets in.
        good = make_token(user.private_key, provider)
        async with s.get(
            f"{broker.url}/v1/user/{user.address}/unsettledfee", headers={"Authorization": good}
        ) as resp:
            assert resp.status == 200


async def test_hostile_parameters_are_400(start_broker: StartBroker, funded_user: FundedUser) -> None:
    deps = BrokerDeps(settlement_factory=UnsettledReport)
    async with (
        start_broker(admin={"token": "s3cret"}, server={"maxBodyBytes": 4096}, deps=deps) as broker,
        aiohttp.ClientSession() as s,
    ):
        provider = broker.provider.address
        user = await funded_user(provider)
        auth = {"Authorization": make_token(user.private_key, provider)}
        mine = f"/v1/user/{user.address}"
        huge = "9" * 5000
        cases: list[tuple[str, str, dict[str, str], Any]] = [
            ("GET", "/v1/request?offset=²", ADMIN, None),
            ("GET", "/v1/request?offset=" + huge, ADMIN, None),
            ("GET", "/v1/request?limit=١٠", ADMIN, None),
            ("GET", "/v1/request?user=not-an-address", ADMIN, None),
            ("GET", "/v1/request?responseId=" + "x" * 1000, ADMIN, None),
            ("GET", "/v1/request?since=²⁰²⁴", ADMIN, None),
            ("GET", "/v1/settlement?offset=²", ADMIN, None),
            ("GET", "/v1/settlement?offset=" + huge, ADMIN, None),
            ("GET", "/v1/settlement?limit=" + huge, ADMIN, None),
            ("GET", "/v1/settlement?user=0x" + "٠" * 40, ADMIN, None),
            ("GET", "/v1/user/0xzz", ADMIN, None),
            ("POST", "/v1/settle", ADMIN, {"users": ["x"]}),
            ("POST", "/v1/settle", ADMIN, {"users": "0x" + "1" * 40}),
            ("POST", "/v1/service", ADMIN, {"inputPrice": True}),  # a TypeError in the validator: was 500
            ("POST", "/v1/service", ADMIN, {"inputPrice": [1]}),
            ("POST", "/v1/service", ADMIN, {"outputPrice": "²"}),
            ("POST", "/v1/service", ADMIN, {"outputPrice": "9" * 100}),
            ("GET", mine + "/settlements?offset=²", auth, None),
            ("GET", mine + "/settlements?offset=" + huge, auth, None),
            ("GET", mine + "/settlements/" + huge, auth, None),
            ("GET", mine + "/settlements/²", auth, None),
            ("GET", mine + "/settlements/" + str(2**256), auth, None),
            ("GET", "/v1/user/0x" + "٠" * 40 + "/unsettledfee", auth, None),
        ]
        for method, path, headers, body in cases:
            async with s.request(method, broker.url + path, headers=headers, json=body) as resp:
                payload = await resp.json(content_type=None)
                assert resp.status == 400, (path[:80], resp.status, payload)
                assert payload["error"]["type"] == "invalid_request_error"
        # Within bounds, the same routes answer.
        for path, headers in [
            ("/v1/request?offset=0&limit=5", ADMIN),
            ("/v1/settlement?offset=0&limit=5", ADMIN),
            (mine + "/settlements?offset=0&limit=1000", auth),
        ]:
            async with s.get(broker.url + path, headers=headers) as resp:
                assert resp.status == 200, (path, await resp.text())
        async with s.get(broker.url + mine + "/settlements/123", headers=auth) as resp:
            assert resp.status == 404
        async with s.post(broker.url + "/v1/settle", headers=ADMIN, data=b"x" * 5000) as resp:
            assert resp.status == 413
        async with s.get(broker.url + "/metrics", headers=ADMIN) as resp:
            assert 'status="500"' not in await resp.text()
