"""The dashboard's page and scripts, shipped with the package: nothing is fetched from elsewhere.

The page holds no data: its script reads everything from the admin API. It is
served under the admin API's rules (:func:`~zgserve.broker.routes.admin_access.require_admin_page`)
with headers that keep other sites out: a Content-Security-Policy allowing only this
origin's scripts and its own inline styles (by hash), no framing, no CORS, no caching
of the page, and ``Cross-Origin-Resource-Policy`` on every file.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from zgserve.broker.routes.admin_access import require_admin_page
from zgserve.common.errors import NotFound

PAGE = "index.html"
SCRIPTS = ("dashboard.js", "vendor/uPlot.iife.min.js")
PATH = "/dashboard"
STATIC = PATH + "/static/"
_STYLE = re.compile(rb"<style>(.*?)</style>", re.DOTALL)
_COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "x-frame-options": "DENY",
}


def _csp(style_hashes: list[str]) -> str:
    styles = " ".join(f"'sha256-{h}'" for h in style_hashes) or "'none'"
    return (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        f"style-src {styles}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@dataclass(frozen=True, slots=True)
class DashboardAssets:
    """The page (with versioned script URLs) and the scripts, read once when the app is built."""

    page: bytes
    csp: str
    scripts: dict[str, tuple[bytes, str]]  # name -> (content, version)

    @classmethod
    def load(cls) -> DashboardAssets:
        root = resources.files("zgserve.broker.dashboard") / "static"
        scripts: dict[str, tuple[bytes, str]] = {}
        page = (root / PAGE).read_bytes()
        for name in SCRIPTS:
            content = root.joinpath(*name.split("/")).read_bytes()
            version = hashlib.sha256(content).hexdigest()[:16]
            scripts[name] = (content, version)
            # A new release changes the URL, so browsers may cache each version for good.
            page = page.replace(f"{{{{{name}}}}}".encode(), f"{STATIC}{name}?v={version}".encode())
        hashes = [
            base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() for m in _STYLE.finditer(page)
        ]
        return cls(page=page, csp=_csp(hashes), scripts=scripts)


def page_routes(assets: DashboardAssets) -> list[Route]:
    async def page(request: Request) -> Response:
        require_admin_page(request)
        headers = _COMMON | {"content-security-policy": assets.csp, "cache-control": "no-store"}
        return Response(assets.page, media_type="text/html; charset=utf-8", headers=headers)

    async def script(request: Request) -> Response:
        require_admin_page(request)
        found = assets.scripts.get(str(request.path_params["name"]))
        if found is None:
            raise NotFound("no such dashboard file", code="route_not_found")
        content, version = found
        cache = "max-age=31536000, immutable" if request.query_params.get("v") == version else "no-cache"
        headers = _COMMON | {"cache-control": "private, " + cache}
        return Response(content, media_type="text/javascript; charset=utf-8", headers=headers)

    return [
        Route(PATH, page, methods=["GET"]),
        Route(STATIC + "{name:path}", script, methods=["GET"]),
    ]
