"""Tokens built by the user client are accepted by the broker's own parser, and only for it."""

from __future__ import annotations

import pytest

from zgserve.broker.auth import TokenVerifier, decode_bearer, parse_claims
from zgserve.broker.errors import BadSignature, WrongProvider
from zgserve.client.tokens import api_key_token, ephemeral_token

USER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
USER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def test_ephemeral_round_trip() -> None:
    signed = ephemeral_token(USER_KEY, PROVIDER.lower(), generation=4)
    raw, signature = decode_bearer(signed.authorization())
    assert (raw, signature) == (signed.raw_message, signed.signature)
    token = TokenVerifier(PROVIDER).bearer(signed.authorization())
    assert token.user == USER.lower()
    assert token.address == USER
    assert token.ephemeral
    assert token.generation == 4
    assert token.expires_at == signed.token.expires_at
    assert token.nonce == signed.token.nonce


def test_api_key_round_trip() -> None:
    signed = api_key_token(USER_KEY, PROVIDER, generation=1, revoked_bitmap=0b11, duration_ms=1000)
    token = TokenVerifier(PROVIDER).bearer(signed.authorization())
    assert token.token_id == 2
    assert not token.ephemeral
    assert token.expires_at == signed.token.timestamp + 1000
    assert parse_claims(signed.raw_message).token_id == 2


def test_legacy_round_trip() -> None:
    signed = ephemeral_token(USER_KEY, PROVIDER, generation=0)
    headers = signed.legacy_headers()
    token = TokenVerifier(PROVIDER).legacy(
        headers["Address"], headers["Session-Token"], headers["Session-Signature"]
    )
    assert token.legacy
    assert token.user == USER.lower()


def test_wrong_provider_and_tampering_are_refused() -> None:
    signed = ephemeral_token(USER_KEY, PROVIDER, generation=0)
    with pytest.raises(WrongProvider):
        TokenVerifier(OTHER).bearer(signed.authorization())
    other = ephemeral_token(USER_KEY, OTHER, generation=0)
    forged = type(signed)(signed.token, other.raw_message, signed.signature)
    with pytest.raises(BadSignature):
        TokenVerifier(OTHER).bearer(forged.authorization())
