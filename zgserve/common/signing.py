"""The signed text, the signer and the verifier beside it.

Every answer of the verifiable service is covered by one small canonical string::

    sha256hex(request body bytes) + ":" + sha256hex(response body bytes)

signed with EIP-191 ``personal_sign`` by a secp256k1 key: the signature is
``0x`` + r‖s‖v (65 bytes, v = 27 or 28), the identity is the key's 20-byte
Ethereum address. This is the format that the NEAR AI / Phala verifiers and the
0G SDK's ``processResponse`` check.

Signing calls coincurve directly (one keccak and one ECDSA over a 32-byte digest)
because eth-account's ``sign_message`` costs several times more per call; the
tests check the round trip against eth-account's independent recovery.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import coincurve
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address

SIGNING_ALGO = "ecdsa"
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"
# secp256k1 group order: a private key must lie in [1, n-1].
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def signed_text(request_body: bytes, response_body: bytes) -> str:
    """The text that is signed for one request/response pair (the only place it is built)."""
    return sha256_hex(request_body) + ":" + sha256_hex(response_body)


def signed_text_from_hashes(request_sha256: str, response_sha256: str) -> str:
    """Same text from hashes computed incrementally (streams)."""
    return request_sha256 + ":" + response_sha256


def eip191_digest(text: str | bytes) -> bytes:
    """keccak256 of the EIP-191 ``personal_sign`` envelope around ``text`` (UTF-8)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return bytes(keccak(_EIP191_PREFIX + str(len(data)).encode("ascii") + data))


def address_from_public_key(public_key: coincurve.PublicKey) -> str:
    """EIP-55 address of a secp256k1 public key."""
    raw = public_key.format(compressed=False)[1:]
    return str(to_checksum_address(bytes(keccak(raw))[-20:]))


def generate_private_key() -> bytes:
    """32 random bytes that form a valid secp256k1 private key (from the OS CSPRNG)."""
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < _SECP256K1_N:
            return candidate


class Signer:
    """A secp256k1 key that signs texts with EIP-191.

    The private key is held only in memory; ``repr`` shows the address alone.
    """

    __slots__ = ("_key", "address")

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32 or not 0 < int.from_bytes(private_key, "big") < _SECP256K1_N:
            raise ValueError("a secp256k1 private key is 32 bytes in [1, n-1]")
        self._key = coincurve.PrivateKey(private_key)
        self.address: str = address_from_public_key(self._key.public_key)

    @classmethod
    def generate(cls) -> Signer:
        """A fresh random key."""
        return cls(generate_private_key())

    @classmethod
    def from_hex(cls, private_key_hex: str) -> Signer:
        return cls(bytes.fromhex(private_key_hex.removeprefix("0x")))

    def private_key_bytes(self) -> bytes:
        """The raw key, for callers that must seal or hand it to a chain client."""
        return bytes(self._key.secret)

    def sign_digest(self, digest: bytes) -> str:
        """``0x`` + r‖s‖v over a 32-byte digest, v in {27, 28}."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return "0x" + sig[:64].hex() + format(sig[64] + 27, "02x")

    def sign_text(self, text: str) -> str:
        """EIP-191 personal_sign signature of ``text``."""
        return self.sign_digest(eip191_digest(text))

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"


def _signature_bytes(signature: str) -> bytes:
    raw = bytes.fromhex(signature.removeprefix("0x"))
    if len(raw) != 65:
        raise ValueError("a signature is 65 bytes (r, s, v)")
    v = raw[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        raise ValueError(f"bad recovery id v={raw[64]}")
    return raw[:64] + bytes([v])


def recover_address(text: str | bytes, signature: str) -> str:
    """The EIP-55 address that produced ``signature`` over ``text``; raises ValueError if malformed."""
    return recover_digest_address(eip191_digest(text), signature)


def recover_digest_address(digest: bytes, signature: str) -> str:
    """The EIP-55 address that signed a 32-byte digest; raises ValueError if malformed."""
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            _signature_bytes(signature), digest, hasher=None
        )
    except ValueError:
        raise
    except Exception as exc:  # coincurve raises its own error type for unrecoverable signatures
        raise ValueError(f"signature does not recover: {exc}") from exc
    return address_from_public_key(public_key)


def verify_text_signature(text: str | bytes, signature: str, address: str) -> bool:
    """True when ``signature`` over ``text`` recovers to ``address`` (compared case-insensitively)."""
    try:
        recovered = recover_address(text, signature)
    except ValueError:
        return False
    return hmac.compare_digest(recovered.lower(), address.lower())


def verify_exchange(
    request_body: bytes, response_body: bytes, text: str, signature: str, address: str
) -> bool:
    """Both hashes in ``text`` match the bytes, and the signature recovers to ``address``."""
    return text == signed_text(request_body, response_body) and verify_text_signature(
        text, signature, address
    )
