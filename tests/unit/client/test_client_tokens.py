"""Session tokens against the SDK 0.9.0 worked example, byte for byte."""

from __future__ import annotations

import base64
import random
import re

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from tests.sdk_token_example import DIGEST, PROVIDER, RAW, RAW_KECCAK, SIGNATURE, USER, USER_KEY
from zgserve.client import tokens
from zgserve.client.tokens import (
    EphemeralTokenCache,
    SessionToken,
    TokenError,
    api_key_token,
    decode_api_key,
    ephemeral_token,
    lowest_free_token_id,
    make_nonce,
    sign_token,
)


def example() -> tokens.SignedToken:
    return ephemeral_token(
        USER_KEY,
        PROVIDER,
        generation=0,
        timestamp_ms=1795332035806,
        nonce="1795332035806-cxvhr6gx7k00000000",
    )


def test_worked_example_byte_for_byte() -> None:
    signed = example()
    assert signed.raw_message == RAW
    assert keccak(text=signed.raw_message).hex() == RAW_KECCAK
    assert encode_defunct(primitive=keccak(text=RAW)).body == bytes.fromhex(RAW_KECCAK)
    assert signed.signature == SIGNATURE
    header = signed.headers()["Authorization"]
    assert header.startswith("Bearer app-sk-eyJhZGRyZXNzIjoi")
    payload = base64.b64decode(header.removeprefix("Bearer app-sk-"))
    assert payload == f"{RAW}|{SIGNATURE}".encode()


def test_digest_is_personal_sign_over_32_hash_bytes() -> None:
    # Independent recovery: the EIP-191 digest over the 32 raw hash bytes.
    prefix = b"\x19Ethereum Signed Message:\n32"
    assert keccak(prefix + bytes.fromhex(RAW_KECCAK)).hex() == DIGEST
    recovered = Account._recover_hash(bytes.fromhex(DIGEST), signature=bytes.fromhex(SIGNATURE[2:]))
    assert recovered == USER
    assert example().recover_signer() == USER


def test_decode_round_trip() -> None:
    signed = example()
    assert decode_api_key(signed.api_key()) == signed
    assert decode_api_key(signed.authorization()) == signed
    assert decode_api_key("  bearer " + signed.api_key()) == signed
    assert decode_api_key(signed.authorization()).recover_signer() == USER


@pytest.mark.parametrize(
    "bad",
    ["", "Bearer sk-abc", "app-sk-!!!", "app-sk-" + base64.b64encode(b"no separator").decode()],
)
def test_decode_rejects_garbage(bad: str) -> None:
    with pytest.raises(TokenError):
        decode_api_key(bad)


def test_legacy_headers() -> None:
    signed = example()
    assert signed.legacy_headers() == {
        "Address": USER,
        "Session-Token": RAW,
        "Session-Signature": SIGNATURE,
    }


def test_nonce_format() -> None:
    rng = random.Random(7)
    for _ in range(200):
        nonce = make_nonce(1795332035806, rng)
        assert len(nonce) == 32
        assert re.fullmatch(r"1795332035806-[0-9a-z]{1,13}0*", nonce)
    assert make_nonce(1, rng).startswith("1-")


def test_ephemeral_defaults() -> None:
    signed = ephemeral_token(USER_KEY, PROVIDER.lower(), generation=3, timestamp_ms=1000)
    assert signed.token.token_id == 255
    assert signed.token.expires_at == 1000 + 24 * 3600 * 1000
    assert signed.token.provider == PROVIDER.lower()  # kept as passed
    assert signed.token.address == USER
    assert signed.token.generation == 3
    assert '"generation":3,"tokenId":255}' in signed.raw_message
    with pytest.raises(TokenError):
        ephemeral_token(USER_KEY, PROVIDER, generation=0, duration_ms=24 * 3600 * 1000 + 1)


def test_api_key_ids_and_expiry() -> None:
    assert lowest_free_token_id(0) == 0
    assert lowest_free_token_id(0b1011) == 2
    assert lowest_free_token_id(1 << 0 | 1 << 5) == 1
    with pytest.raises(TokenError):
        lowest_free_token_id((1 << 255) - 1)
    key = api_key_token(USER_KEY, PROVIDER, generation=1, revoked_bitmap=0b111, timestamp_ms=5)
    assert key.token.token_id == 3
    assert key.token.expires_at == 0
    assert '"expiresAt":0,' in key.raw_message
    timed = api_key_token(USER_KEY, PROVIDER, generation=1, token_id=9, duration_ms=60_000, timestamp_ms=5)
    assert timed.token.expires_at == 60_005
    with pytest.raises(TokenError):
        api_key_token(USER_KEY, PROVIDER, generation=0, token_id=255)
    with pytest.raises(TokenError):
        api_key_token(USER_KEY, PROVIDER, generation=0, token_id=5, revoked_bitmap=32)


def test_expired() -> None:
    token = SessionToken(USER, PROVIDER, 0, 100, "n", 0, 1)
    assert not token.expired(100)
    assert token.expired(101)
    assert not SessionToken(USER, PROVIDER, 0, 0, "n", 0, 1).expired(10**15)


def test_sign_token_matches_sdk_recipe() -> None:
    token = SessionToken(USER, PROVIDER, 1, 2, "x" * 32, 0, 7)
    signed = sign_token(token, USER_KEY)
    expected = Account.sign_message(
        encode_defunct(primitive=keccak(text=token.raw_message())), private_key=USER_KEY
    )
    assert signed.signature == "0x" + bytes(expected.signature).hex()


def test_ephemeral_cache_reuses_until_an_hour_left() -> None:
    now = [1_000_000]
    cache = EphemeralTokenCache(clock_ms=lambda: now[0])
    assert cache.lookup(PROVIDER) is None
    token = ephemeral_token(USER_KEY, PROVIDER, generation=0, timestamp_ms=now[0])
    cache.store(token)
    assert cache.lookup(PROVIDER.lower()) is token
    now[0] += 23 * 3600 * 1000 - 1
    assert cache.lookup(PROVIDER) is token
    now[0] += 1
    assert cache.lookup(PROVIDER) is None
    cache.store(token)
    cache.forget(PROVIDER)
    assert cache.lookup(PROVIDER) is None
