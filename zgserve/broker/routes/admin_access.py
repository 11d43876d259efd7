"""Who may use the admin API (and the dashboard): loopback or the admin token, never another site.

Reachable from loopback only, unless ``admin.token`` is configured: then every
admin call needs ``Authorization: Bearer <token>``, from any address. The peer
address is the socket's, never a forwarded header; behind a reverse proxy on the
same host, configure a token.

A browser on the provider's own machine is on loopback too, so without a token
the admin API also refuses what a web page could send it: state-changing calls
need ``Content-Type: application/json`` (a cross-site simple request cannot set
it, and the preflight it would need gets no CORS headers), requests a browser
marks as cross-site (``Sec-Fetch-Site``) are refused, and the ``Host`` must be
a loopback name or the serving URL's host (DNS rebinding gives another name).
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.requests import Request

from zgserve.broker.core import BrokerCore
from zgserve.broker.errors import AdminForbidden, JsonContentTypeRequired

_LOOPBACK = ("127.", "::1", "::ffff:127.")
_SAFE_METHODS = ("GET", "HEAD")


def _core(request: Request) -> BrokerCore:
    core: BrokerCore = request.app.state.core
    return core


def refuse_cross_site(request: Request) -> BrokerCore:
    """The core, unless a browser says another site (or origin) made this request."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise AdminForbidden("the admin API refuses requests a browser made from another site")
    return _core(request)


def require_admin(request: Request) -> BrokerCore:
    """The core, if this request may use the admin API; :class:`AdminForbidden` (403) otherwise."""
    core = refuse_cross_site(request)
    token = core.settings.admin.token
    if token is not None:
        given = request.headers.get("authorization", "")
        expected = "Bearer " + token.get_secret_value()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AdminForbidden("the admin API needs 'Authorization: Bearer <admin token>'")
        return core
    host = request.client.host if request.client else ""
    if not host.startswith(_LOOPBACK):
        raise AdminForbidden("the admin API is served to loopback only (configure admin.token to open it)")
    if not _local_host_header(request.headers.get("host"), core.settings.serving_url):
        raise AdminForbidden("the admin API answers to loopback host names only (configure admin.token)")
    if request.method not in _SAFE_METHODS and not _is_json(request.headers.get("content-type")):
        raise JsonContentTypeRequired("admin calls that change state need 'Content-Type: application/json'")
    return core


def require_admin_page(request: Request) -> BrokerCore:
    """The admin rules for the dashboard's page and scripts, which hold no data.

    With an admin token a browser cannot send it on a navigation, so the page is served
    without it (never to another site) and its script then sends the token with every
    call. Without a token, the page follows the admin API's loopback rules exactly.
    """
    core = refuse_cross_site(request)
    if core.settings.admin.token is None:
        require_admin(request)
    return core


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").partition(";")[0].strip().lower() == "application/json"


def _local_host_header(value: str | None, serving_url: str) -> bool:
    """True for no Host, a loopback name or address, or the serving URL's own host."""
    if not value:
        return True
    try:
        name = urlsplit("//" + value).hostname or ""
    except ValueError:
        return False
    if name in ("localhost", (urlsplit(serving_url).hostname or "").lower()):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
