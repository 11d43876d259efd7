"""The client-side verifier: never "verified" for a check that did not run."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from zgserve.client.verify import (
    JwtError,
    Verification,
    check_nras,
    verify_jwt_es384,
    verify_report,
    verify_report_local,
    verify_signature,
)
from zgserve.common.signing import Signer, signed_text

NONCE = bytes.fromhex("c3" * 32)


def test_signature_checks_bytes_and_attested_address() -> None:
    signer = Signer.generate()
    request, response = b'{"messages":[]}', b'{"id":"x"}'
    text = signed_text(request, response)
    record = {"text": text, "signature": signer.sign_text(text), "signing_address": signer.address}
    assert verify_signature(request, response, record, expected_address=signer.address).verified
    unattested = verify_signature(request, response, record)
    assert not unattested.verified
    assert not unattested.failed
    tampered = verify_signature(request, response + b" ", record, expected_address=signer.address)
    assert [c.name for c in tampered.failed] == ["response hash"]
    other = verify_signature(request, response, record, expected_address=Signer.generate().address)
    assert [c.name for c in other.failed] == ["signer is the attested key"]
    assert "FAILED" in other.render()


def tdx_quote(report_data: bytes, debug: bool = False) -> str:
    quote = bytearray(1000)
    quote[0:2] = (4).to_bytes(2, "little")
    quote[2:4] = (2).to_bytes(2, "little")
    quote[4:8] = (0x81).to_bytes(4, "little")
    quote[168] = 1 if debug else 0
    quote[568:632] = report_data
    return quote.hex()


def report(address: str, nonce: bytes, *, quote: str, gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = gpu or {"nonce": nonce.hex(), "evidence_list": [], "arch": None, "available": False}
    return {
        "signing_address": address,
        "signing_algo": "ecdsa",
        "request_nonce": nonce.hex(),
        "tee": "tdx",
        "intel_quote": quote,
        "nvidia_payload": json.dumps(payload),
    }


def gpu_payload(nonce: bytes) -> dict[str, Any]:
    evidence = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00" * 64
    return {
        "nonce": nonce.hex(),
        "evidence_list": [{"certificate": "Y2VydA==", "evidence": base64.b64encode(evidence).decode()}],
        "arch": "HOPPER",
    }


def test_quote_binding_nonce_and_debug_flag() -> None:
    address = Signer.generate().address
    bound = bytes.fromhex(address[2:]).ljust(32, b"\0") + NONCE
    good = verify_report_local(report(address, NONCE, quote=tdx_quote(bound), gpu=gpu_payload(NONCE)), NONCE)
    assert not good.failed
    assert {c.name for c in good.not_checked} == {"TDX quote signature chain (Intel)"}
    assert not good.verified  # the Intel signature chain was not checked, so not "verified"
    stale = verify_report_local(report(address, NONCE, quote=tdx_quote(bound)), bytes(32))
    assert {"request_nonce echoes the nonce", "quote report_data[32:] = nonce"} <= {
        c.name for c in stale.failed
    }
    debug = verify_report_local(report(address, NONCE, quote=tdx_quote(bound, debug=True)), NONCE)
    assert "TD is not a debug TD" in {c.name for c in debug.failed}
    no_gpu = verify_report_local(report(address, NONCE, quote=tdx_quote(bound)), NONCE)
    assert "GPU evidence present" in {c.name for c in no_gpu.failed}


def test_simulated_report_never_verifies() -> None:
    simulated = {
        "signing_address": Signer.generate().address,
        "request_nonce": NONCE.hex(),
        "tee": "simulated",
        "simulated": True,
        "intel_quote": "",
        "nvidia_payload": json.dumps({"nonce": NONCE.hex(), "evidence_list": [], "simulated": True}),
    }
    result = verify_report_local(simulated, NONCE)
    assert "TEE hardware evidence" in {c.name for c in result.failed}
    assert not result.verified
    assert "RESULT: FAILED" in result.render()


async def test_offline_says_nras_was_not_contacted() -> None:
    address = Signer.generate().address
    bound = bytes.fromhex(address[2:]).ljust(32, b"\0") + NONCE
    result = await verify_report(
        report(address, NONCE, quote=tdx_quote(bound), gpu=gpu_payload(NONCE)), NONCE, online=False
    )
    assert "NVIDIA NRAS verdict" in {c.name for c in result.not_checked}
    assert "NOT CHECKED" in result.render()
    assert not result.verified


# -- NRAS and its JWTs -----------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key: ec.EllipticCurvePrivateKey, kid: str, claims: dict[str, Any]) -> str:
    head = b64url(json.dumps({"alg": "ES384", "kid": kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA384())))
    return f"{head}.{body}.{b64url(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def jwks_of(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-384", "kid": kid, "x": b64url(numbers.x.to_bytes(48, "big"))}
    return {"keys": [{**jwk, "y": b64url(numbers.y.to_bytes(48, "big"))}]}


def test_jwt_es384_signature_is_checked() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    claims = {"x-nvidia-overall-att-result": True, "exp": time.time() + 60}
    token = make_jwt(key, "k1", claims)
    assert verify_jwt_es384(token, jwks_of(key, "k1"))["x-nvidia-overall-att-result"] is True
    with pytest.raises(JwtError, match="does not verify"):
        verify_jwt_es384(token, jwks_of(ec.generate_private_key(ec.SECP384R1()), "k1"))
    with pytest.raises(JwtError, match="kid"):
        verify_jwt_es384(token, jwks_of(key, "other"))
    head, _body, sig = token.split(".")
    forged = b64url(json.dumps({**claims, "x-nvidia-overall-att-result": True, "extra": 1}).encode())
    with pytest.raises(JwtError):
        verify_jwt_es384(f"{head}.{forged}.{sig}", jwks_of(key, "k1"))
    with pytest.raises(JwtError, match="expired"):
        verify_jwt_es384(make_jwt(key, "k1", {"exp": time.time() - 3600}), jwks_of(key, "k1"))


@pytest.fixture
async def fake_nras() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A stand-in NRAS on loopback; ``control["key"]`` signs, ``control["result"]`` is the verdict."""
    control: dict[str, Any] = {"key": ec.generate_private_key(ec.SECP384R1()), "result": True}
    published = ec.generate_private_key(ec.SECP384R1())
    control["published"] = published

    async def attest(request: web.Request) -> web.Response:
        body = await request.json()
        gpu_claims = {
            "measres": "success",
            "dbgstat": "disabled",
            "x-nvidia-gpu-attestation-report-nonce-match": True,
            "eat_nonce": body["nonce"],
        }
        gpu = make_jwt(control["key"], "nv", gpu_claims)
        overall = make_jwt(
            control["key"],
            "nv",
            {
                "x-nvidia-overall-att-result": control["result"],
                "eat_nonce": body["nonce"],
                "submods": {"GPU-0": ["DIGEST", ["SHA-256", hashlib.sha256(gpu.encode()).hexdigest()]]},
            },
        )
        control["authorization"] = request.headers.get("Authorization")
        return web.json_response([["JWT", overall], {"GPU-0": gpu}])

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(jwks_of(control["published"], "nv"))

    app = web.Application()
    app.router.add_post("/v3/attest/gpu", attest)
    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", control
    finally:
        await runner.cleanup()


async def test_fake_nras_verdict_with_published_keys(fake_nras: tuple[str, dict[str, Any]]) -> None:
    base, control = fake_nras
    urls = (f"{base}/v3/attest/gpu", f"{base}/.well-known/jwks.json")
    async with aiohttp.ClientSession() as session:
        control["key"] = control["published"]
        good = Verification()
        await check_nras(good, session, gpu_payload(NONCE), NONCE, *urls)
        assert not good.failed
        assert not good.not_checked
        assert good.verified

        control["key"] = ec.generate_private_key(ec.SECP384R1())  # not NVIDIA's published key
        forged = Verification()
        await check_nras(forged, session, gpu_payload(NONCE), NONCE, *urls)
        assert [c.name for c in forged.failed] == ["NRAS JWT signatures (ES384, NVIDIA keys)"]

        control["key"], control["result"] = control["published"], False
        refused = Verification()
        await check_nras(refused, session, gpu_payload(NONCE), NONCE, *urls)
        assert [c.name for c in refused.failed] == ["NRAS overall attestation result"]

        assert control["authorization"] is None  # v3 takes no key
        await check_nras(Verification(), session, gpu_payload(NONCE), NONCE, *urls, service_key="nvapi-k")
        assert control["authorization"] == "Bearer nvapi-k"  # v4's service key, as NRAS 4.0.6+ reads it

        unreachable = Verification()
        await check_nras(unreachable, session, gpu_payload(NONCE), NONCE, "http://127.0.0.1:9/x", urls[1])
        assert [c.name for c in unreachable.not_checked] == ["NVIDIA NRAS verdict"]
