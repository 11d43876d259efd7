"""Broker errors: one class per reason a request is refused, each with its status and stable code.

Clients may match on ``error.code``; the classes map to the OpenAI error shape
through :class:`zgserve.common.errors.ZgError`.
"""

from __future__ import annotations

from zgserve.common.errors import (
    BadRequest,
    Forbidden,
    PaymentRequired,
    TooManyRequests,
    Unauthorized,
    UpstreamUnavailable,
    ZgError,
)

__all__ = [
    "AccountNotAcknowledged",
    "AccountNotFound",
    "AddressMismatch",
    "AdminForbidden",
    "BadSignature",
    "ChainUnavailable",
    "InsufficientBalance",
    "InvalidJson",
    "JsonContentTypeRequired",
    "LimitsUnavailable",
    "MalformedToken",
    "MissingToken",
    "OutstandingDebt",
    "RateLimited",
    "RecordFailed",
    "StaleGeneration",
    "StorageUnavailable",
    "TokenExpired",
    "TokenRevoked",
    "TokenTooLarge",
    "WrongProvider",
]


class MissingToken(Unauthorized):
    code = "missing_token"


class MalformedToken(Unauthorized):
    code = "invalid_token"


class TokenTooLarge(MalformedToken):
    """The token's header is over its size limit; refused before it is decoded."""

    code = "token_too_large"


class BadSignature(Unauthorized):
    code = "invalid_signature"


class TokenExpired(Unauthorized):
    code = "token_expired"


class TokenRevoked(Unauthorized):
    """The API key's bit is set in the account's ``revokedBitmap``."""

    code = "token_revoked"


class StaleGeneration(Unauthorized):
    """The token was issued for an older ``generation`` (``revokeAllTokens`` was called since)."""

    code = "token_generation_mismatch"


class WrongProvider(Forbidden):
    code = "wrong_provider"


class AccountNotAcknowledged(Forbidden):
    code = "account_not_acknowledged"


class AddressMismatch(Forbidden):
    code = "address_mismatch"


class AdminForbidden(Forbidden):
    code = "admin_forbidden"


class AccountNotFound(PaymentRequired):
    """No sub-account with this provider: the user must transfer funds first."""

    code = "account_not_found"


class InsufficientBalance(PaymentRequired):
    code = "insufficient_balance"


class OutstandingDebt(PaymentRequired):
    """A past settlement could not collect everything; refused until paid."""

    code = "outstanding_debt"


class InvalidJson(BadRequest):
    code = "invalid_json"


class JsonContentTypeRequired(ZgError):
    """A state-changing admin call without ``Content-Type: application/json`` (nor the admin token).

    A cross-site "simple" request (a form, ``fetch`` with ``text/plain``) can set
    neither, so requiring one keeps web pages from driving the admin API.
    """

    status = 415
    code = "json_content_type_required"
    type = "invalid_request_error"


class ChainUnavailable(UpstreamUnavailable):
    code = "chain_unavailable"


class StorageUnavailable(UpstreamUnavailable):
    """The database could not be read, so the request cannot be admitted safely."""

    code = "storage_unavailable"


class RecordFailed(UpstreamUnavailable):
    """The fee could not be stored, so the answer is withheld rather than given away unrecorded."""

    code = "record_failed"


class RateLimited(TooManyRequests):
    """Over a rate or concurrency limit; ``headers`` go out with the 429 (``Retry-After`` ...)."""

    def __init__(self, message: str, *, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message)
        self.headers = headers


class LimitsUnavailable(ZgError):
    """The shared limits store cannot be reached: admission fails closed."""

    status = 503
    code = "limits_unavailable"
    type = "server_error"
