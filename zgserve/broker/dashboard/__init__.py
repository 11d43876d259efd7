"""The provider's dashboard: a page at ``/dashboard`` over read-only admin routes.

:func:`routes` is what the broker mounts; the page is in :mod:`.page`, the admin
JSON routes it reads in :mod:`.api`, their queries in :mod:`.queries`.
"""

from __future__ import annotations

from starlette.routing import Route

from zgserve.broker.dashboard.api import api_routes
from zgserve.broker.dashboard.page import DashboardAssets, page_routes

__all__ = ["routes"]


def routes() -> list[Route]:
    """The page, its scripts and the admin routes it reads (assets are read from the package now)."""
    return [*page_routes(DashboardAssets.load()), *api_routes()]
