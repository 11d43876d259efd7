"""The token wire format against the SDK 0.9.0 worked example (spec §4) and eth-account."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.sdk_token_example import DIGEST, PROVIDER, RAW, RAW_KECCAK, USER
from tests.sdk_token_example import SIGNATURE as SIG
from zgserve.common.signing import Signer
from zgserve.common.tokens import (
    MAX_API_KEY_CHARS,
    MAX_NONCE_CHARS,
    MAX_SAFE_INTEGER,
    SessionToken,
    TokenFormatError,
    decode_api_key,
    encode_api_key,
    token_digest,
    token_hash,
    token_signer,
)


def test_worked_example_parses_and_rebuilds_byte_for_byte() -> None:
    token = SessionToken.from_raw_message(RAW)
    assert token.raw_message() == RAW
    assert list(token.to_json_dict()) == [
        "address",
        "provider",
        "timestamp",
        "expiresAt",
        "nonce",
        "generation",
        "tokenId",
    ]
    assert token.user == USER.lower()
    assert token.ephemeral
    assert not token.legacy
    assert not token.expired(1795418435806)
    assert token.expired(1795418435807)


def test_digest_and_recovery_match_the_example_and_eth_account() -> None:
    assert token_hash(RAW).hex() == RAW_KECCAK
    assert token_digest(RAW).hex() == DIGEST
    assert token_signer(RAW, SIG) == USER
    assert Account.recover_message(encode_defunct(primitive=token_hash(RAW)), signature=SIG) == USER
    signer = Signer.generate()
    assert token_signer(RAW, signer.sign_digest(token_digest(RAW))) == signer.address


def test_api_key_round_trip() -> None:
    key = encode_api_key(RAW, SIG)
    assert key.startswith("app-sk-eyJhZGRyZXNzIjoi")
    assert base64.b64decode(key.removeprefix("app-sk-")) == f"{RAW}|{SIG}".encode()
    assert decode_api_key(key) == (RAW, SIG)
    assert decode_api_key(encode_api_key('{"nonce":"a|b"}', "0xsig")) == ('{"nonce":"a|b"}', "0xsig")


@pytest.mark.parametrize(
    "key",
    [
        "Bearer " + encode_api_key(RAW, SIG),
        "sk-123",
        "app-sk-!!!",
        "app-sk-" + base64.b64encode(b"no separator").decode(),
        "app-sk-" + base64.b64encode(b"|0xsig").decode(),
    ],
)
def test_decode_rejects_other_text(key: str) -> None:
    with pytest.raises(TokenFormatError):
        decode_api_key(key)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"address":"0x12","provider":"0x00"}',
        '{"address":"' + USER + '","provider":7}',
        '{"address":"' + USER + '","provider":"p","timestamp":true}',
        '{"address":"' + USER + '","provider":"p","tokenId":256}',
    ],
)
def test_from_raw_message_rejects_bad_claims(raw: str) -> None:
    with pytest.raises(TokenFormatError):
        SessionToken.from_raw_message(raw)


def test_legacy_message_defaults() -> None:
    token = SessionToken.from_raw_message(
        '{"address":"' + USER + '","provider":"' + PROVIDER + '","timestamp":"5","nonce":"1"}', legacy=True
    )
    assert token == SessionToken(USER, PROVIDER, 5, 0, "1", 0, 255, legacy=True)
    assert token.legacy
    assert dataclasses.replace(token, address=USER.upper().replace("0X", "0x")).user == USER.lower()


def claims(**changes: object) -> str:
    body: dict[str, object] = json.loads(RAW)
    body.update(changes)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("key", ["timestamp", "expiresAt", "generation", "tokenId"])
@pytest.mark.parametrize(
    "value",
    [
        "²",  # str.isdigit() is True, int() raises: was a 500
        "١٢",  # Arabic-Indic digits: int() reads 12
        "１",  # fullwidth
        " 1",
        "1_0",
        "-1",
        "0x10",
        "",
        -1,
        1.0,
        True,
        None,
        [1],
        {"a": 1},
    ],
)
def test_numeric_claims_are_ascii_integers_only(key: str, value: object) -> None:
    with pytest.raises(TokenFormatError):
        SessionToken.from_raw_message(claims(**{key: value}))


@pytest.mark.parametrize(
    ("key", "largest"),
    [
        ("timestamp", MAX_SAFE_INTEGER),
        ("expiresAt", MAX_SAFE_INTEGER),
        ("generation", 2**256 - 1),
        ("tokenId", 255),
    ],
)
def test_numeric_claims_are_bounded(key: str, largest: int) -> None:
    for ok in (0, largest, str(largest)):
        SessionToken.from_raw_message(claims(**{key: ok}))
    for bad in (largest + 1, str(largest + 1), "9" * 500, 10**300):
        with pytest.raises(TokenFormatError):
            SessionToken.from_raw_message(claims(**{key: bad}))


@pytest.mark.parametrize(
    "address",
    [
        "0x" + "٠" * 40,  # int(x, 16) takes non-ASCII digits
        "0x" + "1_" * 20,  # and underscores
        "0x  " + "1" * 38,  # and spaces
        "0x" + "1" * 39,
        "0x" + "1" * 41,
        "1" * 42,
        42,
        None,
    ],
)
def test_addresses_have_their_exact_form(address: object) -> None:
    with pytest.raises(TokenFormatError):
        SessionToken.from_raw_message(claims(address=address))
    with pytest.raises(TokenFormatError):
        SessionToken.from_raw_message(claims(provider=address))


@pytest.mark.parametrize("nonce", ["n" * (MAX_NONCE_CHARS + 1), "ñ", "a\nb", 1, None, ["x"]])
def test_nonce_is_short_printable_ascii(nonce: object) -> None:
    with pytest.raises(TokenFormatError):
        SessionToken.from_raw_message(claims(nonce=nonce))
    SessionToken.from_raw_message(claims(nonce="x" * MAX_NONCE_CHARS))


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # overflowed the C stack under py_ecc's recursion limit
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        claims(extra={"nested": [1]}),
        claims(nonce="x" * 2000),  # over the message size bound
        RAW[:-1] + ',"tokenId":1}',  # duplicate key: two parsers could read two tokens
        RAW.replace("0,", "NaN,", 1),
        "\ud800",
    ],
)
def test_hostile_messages_are_format_errors(raw: str) -> None:
    with pytest.raises(TokenFormatError):
        SessionToken.from_raw_message(raw)


def test_api_key_is_bounded_before_decoding() -> None:
    with pytest.raises(TokenFormatError, match="over"):
        decode_api_key("app-sk-" + "A" * MAX_API_KEY_CHARS)
    with pytest.raises(TokenFormatError, match="signature"):
        decode_api_key(encode_api_key(RAW, "0x" + "ab" * 200))
    assert len(encode_api_key(RAW, SIG)) < MAX_API_KEY_CHARS // 3
