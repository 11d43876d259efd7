"""One spelling per route: the canonical-path rule shared by the broker and the service.

A request path is served only if it is already canonical: no percent-encoding, no dot
segments, no empty segment (``//``, a trailing ``/``), no backslash. Anything else
could reach a route under a second name, or be read differently by whoever sits
behind us (an HTTP client that normalises, a router that redirects), so it is refused
rather than normalised.
"""

from __future__ import annotations

import re

from zgserve.common.errors import NotFound, ZgError

# One path segment as routes and response ids spell them; "." and ".." excepted below.
_SEGMENT = re.compile(rb"[A-Za-z0-9_.:\-]+")
MAX_PATH = 512


class RouteNotFound(NotFound):
    code = "route_not_found"


class MethodNotAllowed(ZgError):
    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"


def canonical_path(raw: bytes) -> bool:
    """True when ``raw`` (the request target's path, as sent) is in the one spelling routes use."""
    if not raw.startswith(b"/") or len(raw) > MAX_PATH:
        return False
    return all(_SEGMENT.fullmatch(s) and s not in (b".", b"..") for s in raw[1:].split(b"/"))
