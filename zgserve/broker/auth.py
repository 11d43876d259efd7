"""Request authentication: the SDK's ``app-sk-`` bearer tokens and the legacy session headers.

The token's wire format lives in :mod:`zgserve.common.tokens`; here its format
errors become :class:`MalformedToken` (401) and the checks below are applied.

Checks, in order, each with its own error: decoding, signature recovers to
``address``, ``provider`` is us (case-insensitive), not expired, the account
exists and is acknowledged, ``generation`` equals the account's, and for API keys
(tokenId 0-254) the ``revokedBitmap`` bit is clear. Ephemeral tokens (255) are
checked against ``generation`` only, as the SDK documents.

Signature recovery is the costly part, so tokens whose signature has been
checked are remembered (bounded LRU keyed by the exact header value); expiry and
chain state are checked on every request.
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
    WrongProvider,
)
from zgserve.chain.types import Account
from zgserve.common.errors import ZgError
from zgserve.common.tokens import (
    EPHEMERAL_TOKEN_ID,
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
    "TOKEN_PREFIX",
    "AuthResult",
    "Authenticator",
    "SessionToken",
    "TokenVerifier",
    "check_account",
    "decode_bearer",
    "parse_claims",
    "recover_token_signer",
    "token_digest_message",
]


@dataclass(frozen=True, slots=True)
class AuthResult:
    token: SessionToken
    account: Account
    cached: CachedAccount


def decode_bearer(authorization: str) -> tuple[str, str]:
    """``Bearer app-sk-<b64>`` → ``(rawMessage, signature)``; raises :class:`MalformedToken`."""
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


class TokenVerifier:
    """Verifies token signatures and the provider claim, remembering verified tokens."""

    def __init__(self, provider_address: str, *, cache_size: int = 10_000) -> None:
        self._provider = provider_address.lower()
        self._cache: OrderedDict[str, SessionToken] = OrderedDict()
        self._cache_size = cache_size

    def bearer(self, authorization: str) -> SessionToken:
        cached = self._cache.get(authorization)
        if cached is not None:
            self._cache.move_to_end(authorization)
            return cached
        raw, signature = decode_bearer(authorization)
        token = parse_claims(raw)
        self._check_signature(token, raw, signature)
        self._remember(authorization, token)
        return token

    def legacy(self, address: str, session_token: str, session_signature: str) -> SessionToken:
        key = "legacy\x00" + address + "\x00" + session_token + "\x00" + session_signature
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        token = parse_claims(session_token, legacy=True)
        if token.user != address.strip().lower():
            raise MalformedToken("the Address header does not match the session token")
        self._check_signature(token, session_token, session_signature.strip())
        self._remember(key, token)
        return token

    def _check_signature(self, token: SessionToken, raw: str, signature: str) -> None:
        signer = recover_token_signer(raw, signature)
        if signer.lower() != token.user:
            raise BadSignature("the token signature was not made by the token's address")
        if token.provider.lower() != self._provider:
            raise WrongProvider("the token was issued for another provider")

    def _remember(self, key: str, token: SessionToken) -> None:
        self._cache[key] = token
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


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
        """The verified token of a request (no chain reads); raises a 401/403 error."""
        authorization = headers.get("authorization")
        if authorization:
            token = self.verifier.bearer(authorization)
        else:
            address = headers.get("address")
            session_token = headers.get("session-token")
            session_signature = headers.get("session-signature")
            if not (address and session_token and session_signature):
                raise MissingToken("missing 'Authorization: Bearer app-sk-...' header")
            token = self.verifier.legacy(address, session_token, session_signature)
        if token.expires_at and self._clock_ms() > token.expires_at:
            raise TokenExpired("the token has expired")
        return token

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult:
        """Token checks, then chain checks on the cached account (re-read once before refusing)."""
        token = self.token(headers)
        cached = await self.accounts.get(token.user)
        try:
            account = check_account(token, cached.account)
        except ZgError:
            cached = await self.accounts.get(token.user, fresh=True)
            account = check_account(token, cached.account)
        return AuthResult(token=token, account=account, cached=cached)
