"""The signed text, the signer and the verifier, checked against eth-account's independent code."""

from __future__ import annotations

import hashlib

import pytest
from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct

from zgserve.common.signing import (
    Signer,
    eip191_digest,
    recover_address,
    signed_text,
    verify_exchange,
    verify_text_signature,
)

REQUEST = '{"model":"m","messages":[{"role":"user","content":"héllo ✓"}]}'.encode()
RESPONSE = '{"id":"chatcmpl-1","choices":[{"message":{"content":"日本語"}}]}'.encode()


def test_signed_text_is_two_sha256_hex_digests() -> None:
    text = signed_text(REQUEST, RESPONSE)
    assert text == hashlib.sha256(REQUEST).hexdigest() + ":" + hashlib.sha256(RESPONSE).hexdigest()


def test_signature_recovers_with_eth_account() -> None:
    signer = Signer.generate()
    text = signed_text(REQUEST, RESPONSE)
    signature = signer.sign_text(text)
    assert signature.startswith("0x")
    assert len(signature) == 132
    assert int(signature[-2:], 16) in (27, 28)
    assert Account.recover_message(encode_defunct(text=text), signature=signature) == signer.address


def test_eth_account_signature_recovers_with_ours() -> None:
    account = Account.create()
    text = signed_text(REQUEST, RESPONSE)
    signature = account.sign_message(encode_defunct(text=text)).signature.to_0x_hex()
    assert recover_address(text, signature) == account.address


def test_same_key_same_address_as_eth_account() -> None:
    account = Account.create()
    signer = Signer(bytes(account.key))
    assert signer.address == account.address
    assert Signer.from_hex(account.key.hex()).address == account.address


def test_digest_is_eip191_over_utf8() -> None:
    text = "a:b ✓"
    assert eip191_digest(text) == bytes(defunct_hash_message(text=text))


def test_tampered_text_wrong_address_and_garbage_fail() -> None:
    signer = Signer.generate()
    text = signed_text(REQUEST, RESPONSE)
    signature = signer.sign_text(text)
    assert verify_text_signature(text, signature, signer.address)
    assert verify_text_signature(text, signature, signer.address.lower())
    tampered = text[:-1] + ("0" if text[-1] != "0" else "1")
    assert not verify_text_signature(tampered, signature, signer.address)
    assert not verify_text_signature(text, signature, Signer.generate().address)
    assert not verify_text_signature(text, "0x1234", signer.address)
    assert not verify_text_signature(text, signature[:-2] + "05", signer.address)


def test_verify_exchange_checks_the_bytes() -> None:
    signer = Signer.generate()
    text = signed_text(REQUEST, RESPONSE)
    signature = signer.sign_text(text)
    assert verify_exchange(REQUEST, RESPONSE, text, signature, signer.address)
    assert not verify_exchange(REQUEST, RESPONSE + b" ", text, signature, signer.address)
    assert not verify_exchange(REQUEST.replace(b"m", b"n"), RESPONSE, text, signature, signer.address)


def test_key_never_shown() -> None:
    signer = Signer.generate()
    assert signer.private_key_bytes().hex() not in repr(signer)
    assert signer.address in repr(signer)


@pytest.mark.parametrize("key", [b"", b"\x00" * 32, b"\xff" * 32, b"\x01" * 31])
def test_invalid_private_keys_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Signer(key)
