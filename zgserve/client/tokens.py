"""Request auth tokens, built exactly as the official SDK (0.9.0) builds them.

A token is the JSON text ``rawMessage`` with the fixed key order
``{address, provider, timestamp, expiresAt, nonce, generation, tokenId}``, signed
with EIP-191 ``personal_sign`` over the 32 raw bytes of ``keccak256(rawMessage)``.
It travels as ``Authorization: Bearer app-sk-<base64(rawMessage + "|" + signature)>``
or, for the provider's log endpoints, as the legacy ``Address`` /
``Session-Token`` / ``Session-Signature`` headers.

Two kinds exist:

* **ephemeral** (``tokenId`` 255): expires 24 h after issue, revocable only as a
  whole by bumping the account's ``generation``; cached per (user, provider) and
  reused while more than an hour is left, like the SDK does;
* **API keys** (``tokenId`` 0-254): never expire unless a duration is given;
  revoked one by one through the account's ``revokedBitmap``.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

TOKEN_PREFIX = "app-sk-"
EPHEMERAL_TOKEN_ID = 255
MAX_API_KEY_ID = 254
EPHEMERAL_MAX_DURATION_MS = 24 * 60 * 60 * 1000
# The SDK reuses a cached ephemeral token while more than this much time is left.
EPHEMERAL_REUSE_MARGIN_MS = 60 * 60 * 1000
NONCE_LENGTH = 32
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class TokenError(ValueError):
    """A token could not be built or decoded."""


def now_ms() -> int:
    """Wall-clock time in milliseconds, the unit of ``timestamp`` and ``expiresAt``."""
    return time.time_ns() // 1_000_000


def make_nonce(timestamp_ms: int, rng: random.Random | None = None) -> str:
    """``"<ms>-<base36 random>"`` right-padded with ``"0"`` to 32 characters.

    The SDK (Node) takes up to 13 base-36 fraction digits of ``Math.random()``;
    like ``Number.prototype.toString(36)`` no trailing zero digit is emitted.
    """
    fraction = (rng or random).random()
    digits: list[str] = []
    for _ in range(13):
        fraction *= 36
        digit = int(fraction)
        fraction -= digit
        digits.append(_BASE36[digit])
    random_part = "".join(digits).rstrip("0") or "0"
    return f"{timestamp_ms}-{random_part}".ljust(NONCE_LENGTH, "0")


def lowest_free_token_id(revoked_bitmap: int) -> int:
    """The smallest API-key id (0-254) whose bit is not set in ``revoked_bitmap``."""
    for token_id in range(MAX_API_KEY_ID + 1):
        if not revoked_bitmap >> token_id & 1:
            return token_id
    raise TokenError("all 255 API-key ids are revoked; revoke all tokens to reset the bitmap")


@dataclass(frozen=True)
class SessionToken:
    """The signed claims. Field names follow Python; :meth:`raw_message` gives the wire JSON."""

    address: str
    provider: str
    timestamp: int
    expires_at: int
    nonce: str
    generation: int
    token_id: int

    @property
    def ephemeral(self) -> bool:
        return self.token_id == EPHEMERAL_TOKEN_ID

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

    def expired(self, at_ms: int | None = None) -> bool:
        return self.expires_at != 0 and (now_ms() if at_ms is None else at_ms) > self.expires_at


@dataclass(frozen=True)
class SignedToken:
    """A token with its signature, and the header forms derived from them."""

    token: SessionToken
    raw_message: str
    signature: str  # "0x" + 130 hex, v = 27/28

    def api_key(self) -> str:
        """``app-sk-<base64>``: what ``createApiKey`` returns and the CLI prints."""
        payload = f"{self.raw_message}|{self.signature}".encode()
        return TOKEN_PREFIX + base64.b64encode(payload).decode("ascii")

    def authorization(self) -> str:
        return f"Bearer {self.api_key()}"

    def headers(self) -> dict[str, str]:
        """The one header the SDK sends on every request."""
        return {"Authorization": self.authorization()}

    def legacy_headers(self) -> dict[str, str]:
        """The header set the SDK's CLI sends to the provider's ``/v1/logs`` endpoints."""
        return {
            "Address": self.token.address,
            "Session-Token": self.raw_message,
            "Session-Signature": self.signature,
        }

    def recover_signer(self) -> str:
        """The checksummed address that signed ``raw_message``."""
        message = encode_defunct(primitive=keccak(text=self.raw_message))
        signer: str = Account.recover_message(message, signature=self.signature)
        return to_checksum_address(signer)


def sign_token(token: SessionToken, private_key: str | bytes) -> SignedToken:
    """Sign ``token`` as the SDK does: ``signMessage(keccak256(utf8(rawMessage)))``."""
    raw = token.raw_message()
    message = encode_defunct(primitive=keccak(text=raw))
    signed = Account.sign_message(message, private_key=private_key)
    return SignedToken(token=token, raw_message=raw, signature="0x" + bytes(signed.signature).hex())


def _address_of(private_key: str | bytes) -> str:
    address: str = Account.from_key(private_key).address
    return address


def ephemeral_token(
    private_key: str | bytes,
    provider: str,
    *,
    generation: int,
    duration_ms: int = EPHEMERAL_MAX_DURATION_MS,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> SignedToken:
    """A ``tokenId`` 255 token valid for ``duration_ms`` (at most 24 h), as ``getRequestHeaders`` makes."""
    if duration_ms <= 0:
        duration_ms = EPHEMERAL_MAX_DURATION_MS
    if duration_ms > EPHEMERAL_MAX_DURATION_MS:
        raise TokenError(f"ephemeral tokens last at most 24 h ({EPHEMERAL_MAX_DURATION_MS} ms)")
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    token = SessionToken(
        address=_address_of(private_key),
        provider=provider,
        timestamp=ts,
        expires_at=ts + duration_ms,
        nonce=nonce if nonce is not None else make_nonce(ts),
        generation=generation,
        token_id=EPHEMERAL_TOKEN_ID,
    )
    return sign_token(token, private_key)


def api_key_token(
    private_key: str | bytes,
    provider: str,
    *,
    generation: int,
    revoked_bitmap: int = 0,
    token_id: int | None = None,
    duration_ms: int = 0,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> SignedToken:
    """A persistent API key (``tokenId`` 0-254), as ``createApiKey`` makes.

    Without ``token_id`` the lowest id not set in ``revoked_bitmap`` is taken (the
    SDK does not track ids already handed out either). ``duration_ms`` 0 = never expires.
    """
    if token_id is None:
        token_id = lowest_free_token_id(revoked_bitmap)
    elif not 0 <= token_id <= MAX_API_KEY_ID:
        raise TokenError(f"API-key id must be 0..{MAX_API_KEY_ID}, got {token_id}")
    elif revoked_bitmap >> token_id & 1:
        raise TokenError(f"API-key id {token_id} is already revoked; pick another or revoke all tokens")
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    token = SessionToken(
        address=_address_of(private_key),
        provider=provider,
        timestamp=ts,
        expires_at=ts + duration_ms if duration_ms > 0 else 0,
        nonce=nonce if nonce is not None else make_nonce(ts),
        generation=generation,
        token_id=token_id,
    )
    return sign_token(token, private_key)


def decode_api_key(text: str) -> SignedToken:
    """Decode ``[Bearer ]app-sk-<base64>`` back into its token and signature (no checks).

    Use :meth:`SignedToken.recover_signer` to check who signed it.
    """
    text = text.strip()
    if text.lower().startswith("bearer "):
        text = text[7:].strip()
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(f"not an {TOKEN_PREFIX} token")
    try:
        payload = base64.b64decode(text[len(TOKEN_PREFIX) :], validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"token is not valid base64 UTF-8: {exc}") from exc
    raw, sep, signature = payload.rpartition("|")
    if not sep:
        raise TokenError("token has no '|' between message and signature")
    try:
        claims = json.loads(raw)
        token = SessionToken(
            address=str(claims["address"]),
            provider=str(claims["provider"]),
            timestamp=int(claims["timestamp"]),
            expires_at=int(claims["expiresAt"]),
            nonce=str(claims["nonce"]),
            generation=int(claims["generation"]),
            token_id=int(claims["tokenId"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError(f"token message is not the expected JSON: {exc}") from exc
    return SignedToken(token=token, raw_message=raw, signature=signature)


class EphemeralTokenCache:
    """Ephemeral tokens per provider, reused while more than an hour is left (as the SDK does).

    Call :meth:`forget` after revoking all tokens, since the cached ones carry the old generation.
    """

    def __init__(self, clock_ms: Callable[[], int] = now_ms) -> None:
        self._clock_ms = clock_ms
        self._tokens: dict[str, SignedToken] = {}

    def lookup(self, provider: str) -> SignedToken | None:
        cached = self._tokens.get(provider.lower())
        if cached is not None and cached.token.expires_at > self._clock_ms() + EPHEMERAL_REUSE_MARGIN_MS:
            return cached
        return None

    def store(self, token: SignedToken) -> None:
        self._tokens[token.token.provider.lower()] = token

    def forget(self, provider: str | None = None) -> None:
        if provider is None:
            self._tokens.clear()
        else:
            self._tokens.pop(provider.lower(), None)
