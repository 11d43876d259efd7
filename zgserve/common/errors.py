"""Typed errors, mapped once to the OpenAI error shape.

Every component raises subclasses of :class:`ZgError`; the web layer turns them
into ``{"error": {"message", "type", "param", "code"}}`` with the class's HTTP
status. Codes are stable strings that clients may match on.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ZgError(Exception):
    """Base of every error that can reach a client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadRequest(ZgError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class Unauthorized(ZgError):
    status = 401
    code = "invalid_token"
    type = "authentication_error"


class PaymentRequired(ZgError):
    status = 402
    code = "insufficient_balance"
    type = "insufficient_quota"


class Forbidden(ZgError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class NotFound(ZgError):
    status = 404
    code = "not_found"
    type = "not_found_error"


class Conflict(ZgError):
    status = 409
    code = "conflict"
    type = "invalid_request_error"


class PayloadTooLarge(ZgError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"


class TooManyRequests(ZgError):
    status = 429
    code = "rate_limited"
    type = "rate_limit_error"


class UpstreamError(ZgError):
    """The backend answered, but with an error or something unusable."""

    status = 502
    code = "upstream_error"
    type = "upstream_error"


class UpstreamUnavailable(ZgError):
    """The backend could not be reached at all."""

    status = 503
    code = "upstream_unavailable"
    type = "upstream_error"


class ConfigError(ZgError):
    """Start-up configuration is wrong; never reaches a client."""

    code = "config_error"
