"""The ``app-sk-`` request token of the official 0G SDK (0.9.0, spec §4): its wire format, defined once.

::

    Authorization: Bearer app-sk-<base64(rawMessage + "|" + signature)>
    rawMessage = JSON.stringify({address, provider, timestamp, expiresAt, nonce, generation, tokenId})
    signature  = personal_sign(keccak256(utf8(rawMessage)))   # the 32 hash bytes are the message

``timestamp`` and ``expiresAt`` are milliseconds, ``expiresAt`` 0 means never.
``tokenId`` 255 is the ephemeral token; 0-254 are API keys, revocable one by one.

The client builds and signs tokens with these pieces and the broker parses and
verifies them with the same ones. The broker calls :meth:`SessionToken.from_raw_message`
and :func:`decode_api_key` on every request whose token it has not seen yet, so
they stay plain Python: no model validation on that path.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_hash.auto import keccak

from zgserve.common.signing import eip191_digest, recover_digest_address

TOKEN_PREFIX = "app-sk-"
EPHEMERAL_TOKEN_ID = 255
MAX_API_KEY_ID = 254


class TokenFormatError(ValueError):
    """A token's text is not the SDK's wire format; the message says which part is wrong."""


def now_ms() -> int:
    """Wall-clock time in milliseconds, the unit of ``timestamp`` and ``expiresAt``."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class SessionToken:
    """The signed claims. Field names follow Python; :meth:`raw_message` gives the wire JSON.

    ``user`` is the lower-case ``address``, the key of the user's account everywhere.
    ``legacy`` marks a token that came in the legacy ``Session-Token`` header.
    """

    address: str
    provider: str
    timestamp: int
    expires_at: int
    nonce: str
    generation: int
    token_id: int
    legacy: bool = field(default=False, kw_only=True)
    user: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user", self.address.lower())

    @property
    def ephemeral(self) -> bool:
        return self.token_id == EPHEMERAL_TOKEN_ID

    def expired(self, at_ms: int | None = None) -> bool:
        """True once ``at_ms`` (default: now) is past ``expires_at``; never when it is 0."""
        return self.expires_at != 0 and (now_ms() if at_ms is None else at_ms) > self.expires_at

    def to_json_dict(self) -> dict[str, Any]:
        """The SDK's object, keys in its insertion order."""
        return {
            "address": self.address,
            "provider": self.provider,
            "timestamp": self.timestamp,
            "expiresAt": self.expires_at,
            "nonce": self.nonce,
            "generation": self.generation,
            "tokenId": self.token_id,
        }

    def raw_message(self) -> str:
        """``JSON.stringify`` of the claims: no spaces, non-ASCII kept as is."""
        return json.dumps(self.to_json_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_raw_message(cls, raw_message: str, *, legacy: bool = False) -> SessionToken:
        """The claims of a token message; raises :class:`TokenFormatError`.

        ``address`` must be an address and the numbers integers (or digit strings);
        missing numbers read as 0, a missing ``tokenId`` as ephemeral. Legacy session
        tokens carry no ``generation``: read as 0, so revoking all tokens ends them too.
        """
        try:
            claims = json.loads(raw_message)
        except ValueError:
            raise TokenFormatError("the token message is not JSON") from None
        if not isinstance(claims, dict):
            raise TokenFormatError("the token message is not a JSON object")
        address, provider = claims.get("address"), claims.get("provider")
        if not isinstance(address, str) or not _is_address(address):
            raise TokenFormatError("token field 'address' must be an address")
        if not isinstance(provider, str):
            raise TokenFormatError("token field 'provider' must be an address")
        token_id = _int_claim(claims, "tokenId", EPHEMERAL_TOKEN_ID)
        if not 0 <= token_id <= EPHEMERAL_TOKEN_ID:
            raise TokenFormatError("token field 'tokenId' must be 0..255")
        return cls(
            address=address,
            provider=provider,
            timestamp=_int_claim(claims, "timestamp", 0),
            expires_at=_int_claim(claims, "expiresAt", 0),
            nonce=str(claims.get("nonce", "")),
            generation=_int_claim(claims, "generation", 0),
            token_id=token_id,
            legacy=legacy,
        )


def _int_claim(claims: Mapping[str, Any], key: str, default: int) -> int:
    value = claims.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise TokenFormatError(f"token field {key!r} must be an integer")
    return value


def _is_address(value: str) -> bool:
    if len(value) != 42 or not value.startswith(("0x", "0X")):
        return False
    try:
        int(value[2:], 16)
    except ValueError:
        return False
    return True


def encode_api_key(raw_message: str, signature: str) -> str:
    """``app-sk-<base64(rawMessage|signature)>``: what ``createApiKey`` returns and the CLI prints."""
    payload = f"{raw_message}|{signature}".encode()
    return TOKEN_PREFIX + base64.b64encode(payload).decode("ascii")


def decode_api_key(api_key: str) -> tuple[str, str]:
    """``app-sk-<base64>`` (no ``Bearer``) → ``(rawMessage, signature)``; raises :class:`TokenFormatError`.

    Splits on the last ``|``: the signature has none, the message may.
    """
    if not api_key.startswith(TOKEN_PREFIX):
        raise TokenFormatError(f"the token does not start with {TOKEN_PREFIX!r}")
    try:
        decoded = base64.b64decode(api_key[len(TOKEN_PREFIX) :], validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are both ValueErrors
        raise TokenFormatError("the token is not base64 of UTF-8 text") from None
    raw, sep, signature = decoded.rpartition("|")
    if not sep or not raw or not signature:
        raise TokenFormatError("the token is not 'message|signature'")
    return raw, signature


def token_hash(raw_message: str) -> bytes:
    """keccak256 of the UTF-8 message: the 32 bytes the user passes to ``personal_sign``."""
    return bytes(keccak(raw_message.encode("utf-8")))


def token_digest(raw_message: str) -> bytes:
    """The 32-byte digest that is signed: EIP-191 over the 32 raw bytes of keccak256(rawMessage)."""
    return eip191_digest(token_hash(raw_message))


def token_signer(raw_message: str, signature: str) -> str:
    """The checksummed address that signed ``raw_message``; raises ValueError if it does not recover."""
    return recover_digest_address(token_digest(raw_message), signature)
