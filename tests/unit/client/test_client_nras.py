"""NRAS verdicts checked as NVIDIA's policy states them, on recorded real NRAS answers.

The recorded answers (1 GPU, and 8 GPUs in protected-PCIe mode) are signed by NVIDIA's
published key of their ``kid``. No network here, so that key is recovered from the
recording itself: ECDSA public-key recovery gives two candidates per signature, and
the candidate common to two tokens signed under the same ``kid`` is the key. The
clock is pinned to the tokens' ``iat``; they expired an hour later.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from zgserve.client.nras import check_nras_answer, split_answer, verify_jwt_es384
from zgserve.client.verify import Verification

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "dstack_recorded.json"

# NIST P-384 (FIPS 186-4, D.1.2.4).
P = 2**384 - 2**128 - 2**96 + 2**32 - 1
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
B = 0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF
G = (
    0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
    0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F,
)
Point = tuple[int, int] | None


def _add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    if p1[0] == p2[0] and (p1[1] + p2[1]) % P == 0:
        return None
    if p1 == p2:
        slope = (3 * p1[0] * p1[0] - 3) * pow(2 * p1[1], -1, P) % P
    else:
        slope = (p2[1] - p1[1]) * pow(p2[0] - p1[0], -1, P) % P
    x = (slope * slope - p1[0] - p2[0]) % P
    return x, (slope * (p1[0] - x) - p1[1]) % P


def _mul(k: int, point: Point) -> Point:
    out: Point = None
    while k:
        if k & 1:
            out = _add(out, point)
        point = _add(point, point)
        k >>= 1
    return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def recover_candidates(token: str) -> set[tuple[int, int]]:
    """Both public keys that an ES384 JWT's signature can come from (R's x is r: r < p - n)."""
    head, body, sig = token.split(".")
    signature = unb64url(sig)
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    e = int.from_bytes(hashlib.sha384(f"{head}.{body}".encode()).digest(), "big")
    y = pow((r**3 - 3 * r + B) % P, (P + 1) // 4, P)  # P = 3 mod 4: the square root is one power
    keys = set()
    for ry in (y, P - y):
        q = _mul(pow(r, -1, N), _add(_mul(s, (r, ry)), _mul(N - e % N, G)))
        if q is not None:
            keys.add(q)
    return keys


def recorded() -> dict[str, Any]:
    if not FIXTURE.is_file():
        pytest.fail(f"recorded evidence {FIXTURE} is missing")
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def claims_of(token: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(unb64url(token.split(".")[1]))
    return data


def nvidia_jwks(answer: Any) -> dict[str, Any]:
    """NVIDIA's key of the answer's ``kid``, recovered from two of its tokens."""
    overall, gpus = split_answer(answer)
    kid = json.loads(unb64url(overall.split(".")[0]))["kid"]
    common = recover_candidates(overall) & recover_candidates(next(iter(gpus.values())))
    assert len(common) == 1, "two tokens of one kid share exactly one key"
    x, y = common.pop()
    key = {"kty": "EC", "crv": "P-384", "kid": kid, "x": b64url(x.to_bytes(48, "big"))}
    return {"keys": [{**key, "y": b64url(y.to_bytes(48, "big"))}]}


ANSWERS = {"1 GPU": ("NRAS_SAMPLE_RESPONSE", 1), "8 GPUs, PPCIe": ("NRAS_SAMPLE_PPCIE_RESPONSE", 8)}


def load_answer(case: str) -> tuple[Any, dict[str, Any], bytes, float]:
    name, _count = ANSWERS[case]
    answer = recorded()[name]
    overall = claims_of(answer[0][1])
    return answer, nvidia_jwks(answer), bytes.fromhex(overall["eat_nonce"]), float(overall["iat"])


def check(answer: Any, jwks: dict[str, Any], nonce: bytes, count: int, now: float) -> Verification:
    result = Verification()
    check_nras_answer(result, answer, jwks, nonce, count, now=now)
    return result


@pytest.mark.parametrize("case", list(ANSWERS))
def test_recorded_answers_pass_nvidia_policy(case: str) -> None:
    answer, jwks, nonce, iat = load_answer(case)
    count = ANSWERS[case][1]
    result = check(answer, jwks, nonce, count, iat)
    assert not result.failed, result.render()
    assert not result.not_checked
    names = [c.name for c in result.checks]
    assert sum(name.startswith("NRAS GPU-") for name in names) == count
    assert "NRAS submods bind every GPU token" in names
    # Every token of the answer verifies under the recovered key (not only the two it came from).
    for token in [answer[0][1], *answer[1].values()]:
        verify_jwt_es384(token, jwks, now=iat)


@pytest.mark.parametrize("case", list(ANSWERS))
def test_recorded_answers_expire_an_hour_after_iat(case: str) -> None:
    answer, jwks, nonce, iat = load_answer(case)
    stale = check(answer, jwks, nonce, ANSWERS[case][1], iat + 2 * 3600)
    assert [c.name for c in stale.failed] == ["NRAS JWT signatures (ES384, NVIDIA keys)"]


def test_a_removed_gpu_token_is_refused() -> None:
    answer, jwks, nonce, iat = load_answer("8 GPUs, PPCIe")
    gpus = dict(answer[1])
    del gpus["GPU-5"]
    result = check([answer[0], gpus], jwks, nonce, 8, iat)
    failed = {c.name for c in result.failed}
    assert failed == {"NRAS GPU tokens match the evidence count", "NRAS submods bind every GPU token"}
    assert "GPU-5" in next(c.detail for c in result.failed if c.name.startswith("NRAS submods"))


def test_fewer_gpu_tokens_than_evidence_items_is_refused() -> None:
    answer, jwks, nonce, iat = load_answer("1 GPU")
    result = check(answer, jwks, nonce, 2, iat)
    assert {c.name for c in result.failed} == {"NRAS GPU tokens match the evidence count"}


def test_a_wrong_nonce_is_refused() -> None:
    answer, jwks, _nonce, iat = load_answer("8 GPUs, PPCIe")
    result = check(answer, jwks, bytes(32), 8, iat)
    failed = {c.name for c in result.failed}
    assert "NRAS verdict is for our nonce" in failed
    assert {f"NRAS GPU-{i} claims (measres, dbgstat, nonce)" for i in range(8)} <= failed


def test_swapped_gpu_tokens_fail_the_submods_digests() -> None:
    answer, jwks, nonce, iat = load_answer("8 GPUs, PPCIe")
    gpus = dict(answer[1])
    gpus["GPU-0"], gpus["GPU-1"] = gpus["GPU-1"], gpus["GPU-0"]  # each still signed by NVIDIA
    result = check([answer[0], gpus], jwks, nonce, 8, iat)
    assert [c.name for c in result.failed] == ["NRAS submods bind every GPU token"]
    assert "GPU-0, GPU-1" in result.failed[0].detail


def test_a_flipped_measurement_result_breaks_nvidia_signature() -> None:
    answer, jwks, nonce, iat = load_answer("1 GPU")
    head, _body, sig = answer[1]["GPU-0"].split(".")
    flipped = b64url(json.dumps({**claims_of(answer[1]["GPU-0"]), "measres": "fail"}).encode())
    result = check([answer[0], {"GPU-0": f"{head}.{flipped}.{sig}"}], jwks, nonce, 1, iat)
    assert [c.name for c in result.failed] == ["NRAS JWT signatures (ES384, NVIDIA keys)"]


def resign(token: str, key: ec.EllipticCurvePrivateKey, **changes: Any) -> str:
    head = token.split(".")[0]
    body = b64url(json.dumps({**claims_of(token), **changes}).encode())
    r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA384())))
    return f"{head}.{body}.{b64url(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"measres": "fail"}, "measres 'fail'"),
        ({"dbgstat": "enabled"}, "dbgstat 'enabled'"),
        ({"x-nvidia-gpu-attestation-report-nonce-match": False}, "report nonce did not match"),
    ],
)
def test_gpu_claims_policy_on_resigned_recorded_claims_stand_in(
    changes: dict[str, Any], problem: str
) -> None:
    """Recorded claims re-signed with a stand-in key (NVIDIA's is not ours), one claim changed."""
    answer, _jwks, nonce, iat = load_answer("8 GPUs, PPCIe")
    key = ec.generate_private_key(ec.SECP384R1())
    kid = json.loads(unb64url(answer[0][1].split(".")[0]))["kid"]
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-384", "kid": kid, "x": b64url(numbers.x.to_bytes(48, "big"))}
    jwks = {"keys": [{**jwk, "y": b64url(numbers.y.to_bytes(48, "big"))}]}
    gpus = {name: resign(token, key) for name, token in answer[1].items()}
    gpus["GPU-3"] = resign(answer[1]["GPU-3"], key, **changes)
    digests = {n: ["DIGEST", ["SHA-256", hashlib.sha256(t.encode()).hexdigest()]] for n, t in gpus.items()}
    overall = resign(answer[0][1], key, submods=digests)
    result = check([["JWT", overall], gpus], jwks, nonce, 8, iat)
    assert [c.name for c in result.failed] == ["NRAS GPU-3 claims (measres, dbgstat, nonce)"]
    assert result.failed[0].detail == problem

    refused = check(
        [["JWT", resign(overall, key, **{"x-nvidia-overall-att-result": False})], gpus], jwks, nonce, 8, iat
    )
    assert "NRAS overall attestation result" in {c.name for c in refused.failed}


def test_malformed_answers_are_refused() -> None:
    for answer in ([], {"JWT": "x"}, [["JWS", "a.b.c"], {}], [["JWT", "a.b.c"], {"GPU-0": 1}]):
        result = Verification()
        check_nras_answer(result, answer, {"keys": []}, bytes(32), 1)
        assert [c.name for c in result.failed] == ["NVIDIA NRAS verdict"]
