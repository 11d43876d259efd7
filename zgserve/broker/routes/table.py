"""What the broker forwards under ``/v1/proxy``: one table, decided on one canonical path.

| method | path (after ``/v1/proxy``)          | auth   | billing                          |
|--------|-------------------------------------|--------|----------------------------------|
| POST   | ``/chat/completions``               | token  | prompt + output tokens (charged) |
| POST   | ``/completions``                    | token  | prompt + output tokens (charged) |
| POST   | ``/embeddings``                     | token  | prompt tokens (charged)          |
| POST   | ``/images/generations``             | token  | per image × size (charged)       |
| POST   | ``/images/edits`` (multipart)       | token  | per image × size (charged)       |
| POST   | ``/audio/transcriptions`` (multip.) | token  | per second of the upload         |
| POST   | ``/audio/speech``                   | token  | per second of the audio returned |
| GET    | ``/models``, ``/v1/models``         | none   | free                             |
| GET    | ``/attestation/report`` (+ ``/v1``) | none   | free                             |
| GET    | ``/signature/{id}`` (+ ``/v1``)     | none   | free                             |

Anything else is refused (404, or 405 for a known path with another method),
authenticated or not. The decision is made on the raw request target as the
client sent it: a path that is not already canonical (percent-encoding, dot
segments, empty segments, a trailing slash, a backslash) is refused rather than
normalised, because whoever normalises it later (the HTTP client, the service's
router, a redirect) would turn an unbilled path into a billed route. Only the
query parameters a route knows are forwarded, re-encoded; charged routes take none.
The billing of the media routes is :mod:`zgserve.broker.media`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlencode

from zgserve.common.errors import BadRequest
from zgserve.common.media import MediaKind
from zgserve.common.paths import MethodNotAllowed, RouteNotFound, canonical_path

PREFIX = "/v1/proxy"
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_MAX_QUERY = 2048


class Billing(Enum):
    CHARGED = "charged"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """One row of the table; ``upstream`` is the path under the service's ``/v1``."""

    method: str
    billing: Billing
    upstream: str
    query: frozenset[str] = frozenset()
    media: MediaKind | None = None  # None: chat or completions


class UnsupportedQuery(BadRequest):
    code = "unsupported_query"


_CHAT = ProxyRoute("POST", Billing.CHARGED, "/chat/completions")
_TEXT = ProxyRoute("POST", Billing.CHARGED, "/completions")
_MODELS = ProxyRoute("GET", Billing.FREE, "/models")
_REPORT = ProxyRoute(
    "GET", Billing.FREE, "/attestation/report", frozenset({"nonce", "signing_address", "signing_algo"})
)
ROUTES: dict[str, ProxyRoute] = {
    "/chat/completions": _CHAT,
    "/completions": _TEXT,
    "/embeddings": ProxyRoute("POST", Billing.CHARGED, "/embeddings", media="embeddings"),
    "/images/generations": ProxyRoute("POST", Billing.CHARGED, "/images/generations", media="images"),
    "/images/edits": ProxyRoute("POST", Billing.CHARGED, "/images/edits", media="image_edits"),
    "/audio/transcriptions": ProxyRoute(
        "POST", Billing.CHARGED, "/audio/transcriptions", media="transcriptions"
    ),
    "/audio/speech": ProxyRoute("POST", Billing.CHARGED, "/audio/speech", media="speech"),
    "/models": _MODELS,
    "/v1/models": _MODELS,
    "/attestation/report": _REPORT,
    "/v1/attestation/report": _REPORT,
}
_SIGNATURE_QUERY = frozenset({"signing_algo"})


@dataclass(frozen=True, slots=True)
class Resolved:
    """A request matched to its route: the upstream path (with its query) to call."""

    route: ProxyRoute
    rest: str  # the canonical path after the prefix
    target: str  # path and query under the service's /v1


def _canonical_rest(scope: dict[str, Any]) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        raw = scope["path"].encode("utf-8")
    raw = raw.split(b"?", 1)[0]  # some servers keep the query in raw_path
    if not raw.startswith(PREFIX.encode() + b"/") or not canonical_path(raw):
        raise RouteNotFound(
            "no such route (paths must be canonical: no percent-encoding, dot segments, "
            "empty segments or trailing slash)"
        )
    return raw[len(PREFIX) :].decode("ascii")


def _query(scope: dict[str, Any], allowed: frozenset[str], *, charged: bool) -> str:
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return ""
    if charged:
        raise UnsupportedQuery("this route takes no query parameters")
    if len(raw) > _MAX_QUERY:
        raise UnsupportedQuery(f"the query string is over {_MAX_QUERY} bytes")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise UnsupportedQuery("the query string is malformed") from None
    kept: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            continue  # e.g. ``model``, which the SDK adds and the service does not need
        if key in kept:
            raise UnsupportedQuery(f"query parameter {key!r} given twice", param=key)
        kept[key] = value
    return "?" + urlencode(kept) if kept else ""


def resolve(scope: dict[str, Any]) -> Resolved:
    """The route for this request, or a 4xx :class:`ZgError`."""
    rest = _canonical_rest(scope)
    route = ROUTES.get(rest)
    upstream = route.upstream if route is not None else ""
    if route is None:
        for prefix in ("/signature/", "/v1/signature/"):
            if rest.startswith(prefix) and _RESPONSE_ID.fullmatch(rest[len(prefix) :]):
                route = ProxyRoute("GET", Billing.FREE, "/signature", _SIGNATURE_QUERY)
                upstream = "/signature/" + rest[len(prefix) :]
                break
    if route is None:
        raise RouteNotFound(f"no such route: {PREFIX}{rest}")
    if scope["method"] != route.method:
        raise MethodNotAllowed(f"{PREFIX}{rest} takes {route.method}")
    query = _query(scope, route.query, charged=route.billing is Billing.CHARGED)
    return Resolved(route, rest, upstream + query)
