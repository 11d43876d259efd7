"""Request auth tokens, built exactly as the official SDK (0.9.0) builds them.

The wire format (claims, JSON text, ``app-sk-`` encoding, signed digest) is
:mod:`zgserve.common.tokens`; this module makes and signs tokens. A token travels as
``Authorization: Bearer app-sk-...`` or, for the provider's log endpoints, as the
legacy ``Address`` / ``Session-Token`` / ``Session-Signature`` headers.

Two kinds exist:

* **ephemeral** (``tokenId`` 255): expires 24 h after issue, revocable only as a
  whole by bumping the account's ``generation``; cached per (user, provider) and
  reused while more than an hour is left, like the SDK does;
* **API keys** (``tokenId`` 0-254): never expire unless a duration is given;
  revoked one by one through the account's ``revokedBitmap``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from zgserve.common import tokens as wire
from zgserve.common.signing import Signer
from zgserve.common.tokens import (
    EPHEMERAL_TOKEN_ID,
    MAX_API_KEY_ID,
    TOKEN_PREFIX,
    SessionToken,
    TokenFormatError,
    now_ms,
)

__all__ = [
    "EPHEMERAL_MAX_DURATION_MS",
    "EPHEMERAL_REUSE_MARGIN_MS",
    "EPHEMERAL_TOKEN_ID",
    "MAX_API_KEY_ID",
    "TOKEN_PREFIX",
    "EphemeralTokenCache",
    "SessionToken",
    "SignedToken",
    "TokenError",
    "api_key_token",
    "decode_api_key",
    "ephemeral_token",
    "lowest_free_token_id",
    "make_nonce",
    "now_ms",
    "sign_token",
]

EPHEMERAL_MAX_DURATION_MS = 24 * 60 * 60 * 1000
# The SDK reuses a cached ephemeral token while more than this much time is left.
EPHEMERAL_REUSE_MARGIN_MS = 60 * 60 * 1000
NONCE_LENGTH = 32
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class TokenError(ValueError):
    """A token could not be built or decoded."""


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
class SignedToken:
    """A token with its signature, and the header forms derived from them."""

    token: SessionToken
    raw_message: str
    signature: str  # "0x" + 130 hex, v = 27/28

    def api_key(self) -> str:
        """``app-sk-<base64>``: what ``createApiKey`` returns and the CLI prints."""
        return wire.encode_api_key(self.raw_message, self.signature)

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
        return wire.token_signer(self.raw_message, self.signature)


def _signer(private_key: str | bytes) -> Signer:
    return Signer.from_hex(private_key) if isinstance(private_key, str) else Signer(private_key)


def _sign(token: SessionToken, signer: Signer) -> SignedToken:
    raw = token.raw_message()
    return SignedToken(token=token, raw_message=raw, signature=signer.sign_digest(wire.token_digest(raw)))


def sign_token(token: SessionToken, private_key: str | bytes) -> SignedToken:
    """Sign ``token`` as the SDK does: ``signMessage(keccak256(utf8(rawMessage)))``."""
    return _sign(token, _signer(private_key))


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
    signer = _signer(private_key)
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    token = SessionToken(
        address=signer.address,
        provider=provider,
        timestamp=ts,
        expires_at=ts + duration_ms,
        nonce=nonce if nonce is not None else make_nonce(ts),
        generation=generation,
        token_id=EPHEMERAL_TOKEN_ID,
    )
    return _sign(token, signer)


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
    signer = _signer(private_key)
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    token = SessionToken(
        address=signer.address,
        provider=provider,
        timestamp=ts,
        expires_at=ts + duration_ms if duration_ms > 0 else 0,
        nonce=nonce if nonce is not None else make_nonce(ts),
        generation=generation,
        token_id=token_id,
    )
    return _sign(token, signer)


def decode_api_key(text: str) -> SignedToken:
    """Decode ``[Bearer ]app-sk-<base64>`` back into its token and signature (signature not checked).

    Use :meth:`SignedToken.recover_signer` to check who signed it.
    """
    text = text.strip()
    if text.lower().startswith("bearer "):
        text = text[7:].strip()
    try:
        raw, signature = wire.decode_api_key(text)
        token = SessionToken.from_raw_message(raw)
    except TokenFormatError as exc:
        raise TokenError(str(exc)) from exc
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
