"""NVIDIA's remote attestation service (NRAS): send GPU evidence, check its signed verdict.

NRAS answers ``[["JWT", overall], {"GPU-0": token, ...}]``: an overall token and one
token per GPU, each an ES384 JWT signed with a key NVIDIA publishes (JWKS). The
overall result alone is not the policy NVIDIA states; this module checks, as the
nvtrust verifier's default policy does:

* every token's signature, expiry and not-before against NVIDIA's keys;
* the overall ``x-nvidia-overall-att-result``, and ``eat_nonce`` equal to our nonce;
* that the overall token's ``submods`` name exactly the GPU tokens returned, each with
  the SHA-256 digest of that token's text, which is what binds a GPU token to the
  verdict (an unbound GPU token could come from another attestation);
* as many GPU tokens as evidence items were sent (none dropped, none added);
* per GPU: ``measres`` is ``success``, ``dbgstat`` is ``disabled``, the report's nonce
  matched (``x-nvidia-gpu-attestation-report-nonce-match``) and ``eat_nonce`` is ours.

Version 3 of the API (``/v3/attest/gpu``) is the default and needs no key. Version 4
(``/v4/attest/gpu``) takes an NGC service key, sent as ``Authorization: Bearer <key>``
(NRAS 4.0.6 and later); pass ``nras_url=NRAS_V4_URL`` and ``service_key``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

if TYPE_CHECKING:
    # Only for annotations: verify.py imports this module, so a runtime import would be circular.
    from zgserve.client.verify import Verification

NRAS_V3_URL = "https://nras.attestation.nvidia.com/v3/attest/gpu"
NRAS_V4_URL = "https://nras.attestation.nvidia.com/v4/attest/gpu"
NRAS_URL = NRAS_V3_URL
NRAS_JWKS_URL = "https://nras.attestation.nvidia.com/.well-known/jwks.json"
# JWT clock skew tolerated on exp/nbf, in seconds.
_LEEWAY_S = 60


class JwtError(Exception):
    """A JWT that is malformed, unsigned by a published key, or outside its validity."""


class NrasAnswerError(ValueError):
    """An NRAS answer that is not ``[["JWT", overall], {"GPU-n": token}]``."""


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _jwk_public_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    if jwk.get("x") and jwk.get("y"):
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(_b64url(jwk["x"]), "big"), int.from_bytes(_b64url(jwk["y"]), "big"), ec.SECP384R1()
        )
        return numbers.public_key()
    if jwk.get("x5c"):
        key = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0])).public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key
    raise JwtError(f"JWK {jwk.get('kid')!r} holds no P-384 public key")


def verify_jwt_es384(token: str, jwks: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The claims of ``token`` after checking its ES384 signature against ``jwks``; raises JwtError."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_b64url(header_b64))
        claims = json.loads(_b64url(claims_b64))
        signature = _b64url(signature_b64)
    except (ValueError, binascii.Error) as exc:
        raise JwtError(f"malformed JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("malformed JWT: header and claims must be JSON objects")
    if header.get("alg") != "ES384":
        raise JwtError(f"JWT algorithm is {header.get('alg')!r}, expected ES384")
    keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
    if not keys:
        raise JwtError(f"no published key with kid {header.get('kid')!r}")
    if len(signature) != 96:
        raise JwtError("an ES384 signature is 96 bytes")
    der = encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
    try:
        _jwk_public_key(keys[0]).verify(
            der, f"{header_b64}.{claims_b64}".encode("ascii"), ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature as exc:
        raise JwtError("JWT signature does not verify") from exc
    now = time.time() if now is None else now
    if isinstance(claims.get("exp"), int | float) and now > claims["exp"] + _LEEWAY_S:
        raise JwtError("JWT has expired")
    if isinstance(claims.get("nbf"), int | float) and now < claims["nbf"] - _LEEWAY_S:
        raise JwtError("JWT is not valid yet")
    return dict(claims)


def split_answer(answer: Any) -> tuple[str, dict[str, str]]:
    """The overall token and the GPU tokens by name; raises NrasAnswerError on any other shape."""
    if not (isinstance(answer, list) and len(answer) == 2):
        raise NrasAnswerError("NRAS answer is not a two-item list")
    head, gpus = answer
    if not (isinstance(head, list) and len(head) == 2 and head[0] == "JWT" and isinstance(head[1], str)):
        raise NrasAnswerError('NRAS answer does not start with ["JWT", token]')
    if not isinstance(gpus, dict) or not all(isinstance(v, str) for v in gpus.values()):
        raise NrasAnswerError("NRAS answer's GPU tokens are not a name-to-token object")
    return head[1], dict(gpus)


def _submod_digest(entry: Any) -> str | None:
    """The SHA-256 hex of a ``["DIGEST", ["SHA-256", hex]]`` submods entry, else None."""
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == "DIGEST":
        algorithm = entry[1]
        if isinstance(algorithm, list) and len(algorithm) == 2 and algorithm[0] == "SHA-256":
            return str(algorithm[1]).lower()
    return None


def _gpu_claim_problems(claims: dict[str, Any], nonce: bytes) -> list[str]:
    problems = []
    if claims.get("measres") != "success":
        problems.append(f"measres {claims.get('measres')!r}")
    if claims.get("dbgstat") != "disabled":
        problems.append(f"dbgstat {claims.get('dbgstat')!r}")
    if claims.get("x-nvidia-gpu-attestation-report-nonce-match") is not True:
        problems.append("report nonce did not match")
    if str(claims.get("eat_nonce", "")).lower() != nonce.hex():
        problems.append(f"eat_nonce {claims.get('eat_nonce')!r}")
    return problems


def check_nras_answer(
    result: Verification,
    answer: Any,
    jwks: dict[str, Any],
    nonce: bytes,
    evidence_count: int,
    *,
    now: float | None = None,
) -> None:
    """Check an NRAS answer for ``evidence_count`` GPUs attested with ``nonce`` (no network)."""
    try:
        overall_token, gpu_tokens = split_answer(answer)
    except NrasAnswerError as exc:
        result.add("NVIDIA NRAS verdict", False, str(exc))
        return
    try:
        overall = verify_jwt_es384(overall_token, jwks, now=now)
        gpu_claims = {name: verify_jwt_es384(token, jwks, now=now) for name, token in gpu_tokens.items()}
    except JwtError as exc:
        result.add("NRAS JWT signatures (ES384, NVIDIA keys)", False, str(exc))
        return
    result.add("NRAS JWT signatures (ES384, NVIDIA keys)", True, f"{1 + len(gpu_tokens)} token(s)")
    verdict = overall.get("x-nvidia-overall-att-result")
    result.add("NRAS overall attestation result", verdict is True, str(verdict))
    eat_nonce = str(overall.get("eat_nonce", "")).lower()
    result.add("NRAS verdict is for our nonce", eat_nonce == nonce.hex(), eat_nonce or "no eat_nonce claim")
    result.add(
        "NRAS GPU tokens match the evidence count",
        len(gpu_tokens) == evidence_count,
        f"{len(gpu_tokens)} token(s) for {evidence_count} evidence item(s)",
    )
    submods = overall.get("submods")
    submods = submods if isinstance(submods, dict) else {}
    unbound = sorted(
        name
        for name in set(submods) | set(gpu_tokens)
        if name not in gpu_tokens
        or _submod_digest(submods.get(name)) != hashlib.sha256(gpu_tokens[name].encode("ascii")).hexdigest()
    )
    result.add(
        "NRAS submods bind every GPU token",
        bool(gpu_tokens) and not unbound,
        f"unbound: {', '.join(unbound)}" if unbound else f"{len(gpu_tokens)} digest(s) match",
    )
    for name in sorted(gpu_claims):
        problems = _gpu_claim_problems(gpu_claims[name], nonce)
        result.add(f"NRAS {name} claims (measres, dbgstat, nonce)", not problems, "; ".join(problems))


async def check_nras(
    result: Verification,
    session: aiohttp.ClientSession,
    payload: dict[str, Any],
    nonce: bytes,
    nras_url: str = NRAS_URL,
    jwks_url: str = NRAS_JWKS_URL,
    *,
    service_key: str | None = None,
    now: float | None = None,
) -> None:
    """Send the GPU evidence to NRAS and check its signed verdict against NVIDIA's policy."""
    evidence_list = payload.get("evidence_list") or []
    body = {
        "nonce": payload.get("nonce"),
        "evidence_list": evidence_list,
        "arch": payload.get("arch") or "HOPPER",
        "claims_version": "2.0",
    }
    headers = {"Authorization": f"Bearer {service_key}"} if service_key else {}
    try:
        async with session.post(nras_url, json=body, headers=headers) as resp:
            if resp.status != 200:
                result.add("NVIDIA NRAS verdict", False, f"NRAS answered HTTP {resp.status}")
                return
            answer = await resp.json(content_type=None)
        async with session.get(jwks_url) as resp:
            jwks = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        result.skip("NVIDIA NRAS verdict", f"NRAS unreachable: {exc}")
        return
    if not isinstance(jwks, dict):
        result.add("NRAS JWT signatures (ES384, NVIDIA keys)", False, "the JWKS is not a JSON object")
        return
    check_nras_answer(result, answer, jwks, nonce, len(evidence_list), now=now)
