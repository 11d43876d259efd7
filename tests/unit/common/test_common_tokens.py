"""The token wire format against the SDK 0.9.0 worked example (spec §4) and eth-account."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.sdk_token_example import DIGEST, RAW, RAW_KECCAK, USER
from tests.sdk_token_example import SIGNATURE as SIG
from zgserve.common.signing import Signer
from zgserve.common.tokens import (
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
        '{"address":"' + USER + '","provider":"p","timestamp":"5","nonce":1}', legacy=True
    )
    assert token == SessionToken(USER, "p", 5, 0, "1", 0, 255, legacy=True)
    assert token.legacy
    assert dataclasses.replace(token, address=USER.upper().replace("0X", "0x")).user == USER.lower()
