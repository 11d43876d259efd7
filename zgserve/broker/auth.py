"""Request authentication: the SDK's ``app-sk-`` bearer tokens and the legacy session headers.

The token's wire format lives in :mod:`zgserve.common.tokens`; here its format
errors become :class:`MalformedToken` (401) and the checks below are applied.

Checks, in order, each with its own error: decoding, signature recovers to
``address``, ``provider`` is us (case-insensitive), not expired, the account
exists and is acknowledged, ``generation`` equals the account's, and for API keys
(tokenId 0-254) the ``revokedBitmap`` bit is clear. Ephemeral tokens (255) are
checked against ``generation`` only, as the SDK documents.

Header sizes are bounded before any decoding. Signature recovery is the costly
part, so tokens that passed every check, account included, are remembered (an LRU
keyed by the exact header value, bounded by entries and bytes); expiry and chain
state are checked on every request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from zgserve.broker.accounts import AccountCache, CachedAccount
from zgserve.broker.errors import (
    AccountNotAcknowledged,
    AccountNotFound,
    BadSignature,
    MalformedToken,
    MissingToken,
    StaleGeneration,
    TokenExpired,
    TokenRevoked,
    TokenTooLarge,
    WrongProvider,
)
from zgserve.chain.types import Account
from zgserve.common.errors import ZgError
from zgserve.common.tokens import (
    EPHEMERAL_TOKEN_ID,
    MAX_API_KEY_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_SIGNATURE_CHARS,
    TOKEN_PREFIX,
    SessionToken,
    TokenFormatError,
    decode_api_key,
    now_ms,
    token_signer,
)
from zgserve.common.tokens import token_hash as token_digest_message

__all__ = [
    "EPHEMERAL_TOKEN_ID",
    "MAX_AUTHORIZATION_CHARS",
    "TOKEN_PREFIX",
    "AuthResult",
    "Authenticator",
    "SessionToken",
    "TokenCache",
    "TokenVerifier",
    "check_account",
    "decode_bearer",
    "legacy_key",
    "parse_claims",
    "recover_token_signer",
    "token_digest_message",
]

# "Bearer " and an api key, with room for stray whitespace.
MAX_AUTHORIZATION_CHARS = MAX_API_KEY_CHARS + 64
MAX_ADDRESS_HEADER_CHARS = 64


@dataclass(frozen=True, slots=True)
class AuthResult:
    token: SessionToken
    account: Account
    cached: CachedAccount


def decode_bearer(authorization: str) -> tuple[str, str]:
    """``Bearer app-sk-<b64>`` → ``(rawMessage, signature)``; raises :class:`MalformedToken`."""
    # Bounded before any stripping, base64 or JSON work.
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        raise TokenTooLarge(f"the Authorization header is over {MAX_AUTHORIZATION_CHARS} characters")
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential.startswith(TOKEN_PREFIX):
        raise MalformedToken("Authorization must be 'Bearer app-sk-...'")
    try:
        return decode_api_key(credential)
    except TokenFormatError as exc:
        raise MalformedToken(str(exc)) from None


def recover_token_signer(raw_message: str, signature: str) -> str:
    """The checksummed address that signed ``raw_message``; raises :class:`BadSignature`."""
    try:
        return token_signer(raw_message, signature)
    except ValueError:
        raise BadSignature("the token signature is malformed or does not recover") from None


def parse_claims(raw_message: str, *, legacy: bool = False) -> SessionToken:
    """The claims of a token message (JSON); raises :class:`MalformedToken`."""
    try:
        return SessionToken.from_raw_message(raw_message, legacy=legacy)
    except TokenFormatError as exc:
        raise MalformedToken(str(exc)) from None


def check_account(token: SessionToken, account: Account | None) -> Account:
    """Chain-state checks of a verified token; returns the account or raises the matching error."""
    if account is None:
        raise AccountNotFound(f"no account of {token.address} with this provider: transfer funds to it first")
    if not account.acknowledged:
        raise AccountNotAcknowledged("the account has not acknowledged this provider's TEE signer")
    if token.generation != account.generation:
        raise StaleGeneration(
            f"token generation {token.generation} != account generation {account.generation}"
            " (all tokens were revoked)"
        )
    if not token.ephemeral and account.is_token_revoked(token.token_id):
        raise TokenRevoked(f"API key {token.token_id} has been revoked")
    return account


class TokenCache:
    """Verified tokens by the exact header text: LRU, bounded by entries and by bytes.

    Only tokens that passed the account checks are put here (see
    :meth:`Authenticator.authenticate`), so a wallet with no account cannot fill it;
    the byte bound holds whatever the header sizes.
    """

    # Rough bytes per entry beyond the key and nonce text: the SessionToken, its
    # address strings and the dict slot. An estimate is enough: the bound is coarse.
    ENTRY_OVERHEAD = 512

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 16 << 20) -> None:
        self._entries: OrderedDict[str, SessionToken] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> SessionToken | None:
        token = self._entries.get(key)
        if token is not None:
            self._entries.move_to_end(key)
        return token

    def put(self, key: str, token: SessionToken) -> None:
        cost = self._cost(key, token)
        if cost > self._max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= self._cost(key, previous)
        self._entries[key] = token
        self._bytes += cost
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self._bytes -= self._cost(old_key, old)

    @classmethod
    def _cost(cls, key: str, token: SessionToken) -> int:
        return cls.ENTRY_OVERHEAD + len(key) + len(token.nonce)


class TokenVerifier:
    """Verifies token signatures and the provider claim; :meth:`remember` caches a verified token.

    Callers remember a token only once it has passed every check, so the cache holds
    tokens of real accounts only.
    """

    def __init__(
        self, provider_address: str, *, cache_size: int = 10_000, cache_bytes: int = 16 << 20
    ) -> None:
        self._provider = provider_address.lower()
        self.cache = TokenCache(max_entries=cache_size, max_bytes=cache_bytes)

    def bearer(self, authorization: str) -> SessionToken:
        """The verified token of an ``Authorization`` header; raises a 401/403 error."""
        cached = self.cache.get(authorization)
        if cached is not None:
            return cached
        raw, signature = decode_bearer(authorization)
        token = parse_claims(raw)
        self._check_signature(token, raw, signature)
        return token

    def legacy(self, address: str, session_token: str, session_signature: str) -> SessionToken:
        """The verified token of the legacy ``Address``/``Session-Token``/``Session-Signature`` headers."""
        cached = self.cache.get(legacy_key(address, session_token, session_signature))
        if cached is not None:
            return cached
        if (
            len(address) > MAX_ADDRESS_HEADER_CHARS
            or len(session_token) > MAX_MESSAGE_BYTES
            or len(session_signature) > MAX_SIGNATURE_CHARS
        ):
            raise TokenTooLarge("a legacy session header is over its size limit")
        token = parse_claims(session_token, legacy=True)
        if token.user != address.strip().lower():
            raise MalformedToken("the Address header does not match the session token")
        self._check_signature(token, session_token, session_signature.strip())
        return token

    def remember(self, key: str, token: SessionToken) -> None:
        """Cache ``token`` under its header text (``authorization`` or :func:`legacy_key`)."""
        self.cache.put(key, token)

    def _check_signature(self, token: SessionToken, raw: str, signature: str) -> None:
        signer = recover_token_signer(raw, signature)
        if signer.lower() != token.user:
            raise BadSignature("the token signature was not made by the token's address")
        if token.provider.lower() != self._provider:
            raise WrongProvider("the token was issued for another provider")


def legacy_key(address: str, session_token: str, session_signature: str) -> str:
    """The cache key of legacy headers (NUL cannot occur in an HTTP header value)."""
    return "legacy\x00" + address + "\x00" + session_token + "\x00" + session_signature


class Authenticator:
    """Turns request headers into a verified token and the user's current account."""

    def __init__(
        self,
        verifier: TokenVerifier,
        accounts: AccountCache,
        *,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.verifier = verifier
        self.accounts = accounts
        self._clock_ms = clock_ms

    def token(self, headers: Mapping[str, str]) -> SessionToken:
        """The verified token of a request (no chain reads); raises a 401/403 error.

        This alone admits revoked and old-generation tokens: routes serving a user
        call :meth:`authenticate`.
        """
        return self._verified(headers)[1]

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult:
        """Token checks, then chain checks on the cached account (re-read once before refusing).

        The token is cached only after the account checks pass.
        """
        key, token = self._verified(headers)
        cached = await self.accounts.get(token.user)
        try:
            account = check_account(token, cached.account)
        except ZgError:
            cached = await self.accounts.get(token.user, fresh=True)
            account = check_account(token, cached.account)
        self.verifier.remember(key, token)
        return AuthResult(token=token, account=account, cached=cached)

    def _verified(self, headers: Mapping[str, str]) -> tuple[str, SessionToken]:
        """``(cache key, token)``: signature, provider and expiry checked."""
        authorization = headers.get("authorization")
        if authorization:
            key, token = authorization, self.verifier.bearer(authorization)
        else:
            address = headers.get("address")
            session_token = headers.get("session-token")
            session_signature = headers.get("session-signature")
            if not (address and session_token and session_signature):
                raise MissingToken("missing 'Authorization: Bearer app-sk-...' header")
            key = legacy_key(address, session_token, session_signature)
            token = self.verifier.legacy(address, session_token, session_signature)
        if token.expires_at and self._clock_ms() > token.expires_at:
            raise TokenExpired("the token has expired")
        return key, token
