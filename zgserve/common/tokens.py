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

Anyone can send a token, so everything is bounded before it is decoded: the
``app-sk-`` text and the message by size (an SDK token is about 500 characters),
the JSON by depth (:mod:`zgserve.common.jsonsafe`), each number by ASCII digits
and range, the nonce by length and characters, addresses by their exact form.
A token outside these bounds is a :class:`TokenFormatError`, never another error.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from eth_hash.auto import keccak

from zgserve.common import jsonsafe
from zgserve.common.errors import ZgError
from zgserve.common.signing import eip191_digest, recover_digest_address

TOKEN_PREFIX = "app-sk-"
EPHEMERAL_TOKEN_ID = 255
MAX_API_KEY_ID = 254

# Size bounds, checked before any base64 or JSON work. The SDK's message is ~230 bytes
# and its api key ~500 characters; the bounds leave room for long nonces and spacing.
MAX_MESSAGE_BYTES = 1024
MAX_SIGNATURE_CHARS = 256
MAX_API_KEY_CHARS = len(TOKEN_PREFIX) + 4 * -(-(MAX_MESSAGE_BYTES + 1 + MAX_SIGNATURE_CHARS) // 3)
MAX_NONCE_CHARS = 64
# Times are JS numbers in ms: nothing past Number.MAX_SAFE_INTEGER can come from the SDK.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_UINT256 = 2**256 - 1

_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")
_DIGITS = re.compile(r"[0-9]{1,78}")  # ASCII only: str.isdigit() also takes "²" and "١٢"
_NONCE = re.compile(r"[\x20-\x7e]*")  # printable ASCII


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

        ``address`` and ``provider`` must be addresses, the numbers integers (or ASCII
        digit strings) in range, the nonce a short printable ASCII string; missing
        numbers read as 0, a missing ``tokenId`` as ephemeral. Legacy session tokens
        carry no ``generation``: read as 0, so revoking all tokens ends them too.
        """
        if len(raw_message) > MAX_MESSAGE_BYTES:  # chars <= bytes: a cheap first cut
            raise TokenFormatError(f"the token message is over {MAX_MESSAGE_BYTES} bytes")
        try:
            claims = jsonsafe.loads_object(
                raw_message, max_bytes=MAX_MESSAGE_BYTES, max_depth=2, what="the token message"
            )
        except ZgError as exc:  # InvalidJson, JsonTooDeep, PayloadTooLarge
            raise TokenFormatError(exc.message) from None
        address, provider = claims.get("address"), claims.get("provider")
        if not _is_address(address):
            raise TokenFormatError("token field 'address' must be an address")
        if not _is_address(provider):
            raise TokenFormatError("token field 'provider' must be an address")
        nonce = claims.get("nonce", "")
        if not isinstance(nonce, str) or len(nonce) > MAX_NONCE_CHARS or not _NONCE.fullmatch(nonce):
            raise TokenFormatError(f"token field 'nonce' must be up to {MAX_NONCE_CHARS} printable ASCII")
        return cls(
            address=address,
            provider=provider,
            timestamp=_int_claim(claims, "timestamp", 0, MAX_SAFE_INTEGER),
            expires_at=_int_claim(claims, "expiresAt", 0, MAX_SAFE_INTEGER),
            nonce=nonce,
            generation=_int_claim(claims, "generation", 0, MAX_UINT256),
            token_id=_int_claim(claims, "tokenId", EPHEMERAL_TOKEN_ID, EPHEMERAL_TOKEN_ID),
            legacy=legacy,
        )


def _int_claim(claims: Mapping[str, Any], key: str, default: int, maximum: int) -> int:
    """A JSON integer or a string of ASCII digits, in ``0..maximum``."""
    value = claims.get(key, default)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        bound = maximum if maximum < 10**6 else f"2^{maximum.bit_length()}-1"
        raise TokenFormatError(f"token field {key!r} must be an integer (ASCII digits) in 0..{bound}")
    return value


def _is_address(value: object) -> TypeGuard[str]:
    # int(x, 16) would also take spaces, underscores and non-ASCII digits.
    return isinstance(value, str) and _ADDRESS.fullmatch(value) is not None


def encode_api_key(raw_message: str, signature: str) -> str:
    """``app-sk-<base64(rawMessage|signature)>``: what ``createApiKey`` returns and the CLI prints."""
    payload = f"{raw_message}|{signature}".encode()
    return TOKEN_PREFIX + base64.b64encode(payload).decode("ascii")


def decode_api_key(api_key: str) -> tuple[str, str]:
    """``app-sk-<base64>`` (no ``Bearer``) → ``(rawMessage, signature)``; raises :class:`TokenFormatError`.

    Splits on the last ``|``: the signature has none, the message may. The text is
    bounded by :data:`MAX_API_KEY_CHARS` before it is decoded.
    """
    if len(api_key) > MAX_API_KEY_CHARS:
        raise TokenFormatError(f"the token is over {MAX_API_KEY_CHARS} characters")
    if not api_key.startswith(TOKEN_PREFIX):
        raise TokenFormatError(f"the token does not start with {TOKEN_PREFIX!r}")
    try:
        decoded = base64.b64decode(api_key[len(TOKEN_PREFIX) :], validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are both ValueErrors
        raise TokenFormatError("the token is not base64 of UTF-8 text") from None
    raw, sep, signature = decoded.rpartition("|")
    if not sep or not raw or not signature:
        raise TokenFormatError("the token is not 'message|signature'")
    if len(signature) > MAX_SIGNATURE_CHARS:
        raise TokenFormatError(f"the token signature is over {MAX_SIGNATURE_CHARS} characters")
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
