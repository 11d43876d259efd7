"""How the service runs under uvicorn: uvloop, httptools, no per-request extras.

Access logs, proxy-header rewriting and the ``server`` header cost CPU on every
request and are off; the CLI and the tests use the same configuration.
"""

from __future__ import annotations

from typing import Any

import uvicorn


def uvicorn_config(app: Any, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration the service runs with; ``overrides`` replace single options."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "log_level": "info",
        "timeout_graceful_shutdown": 10,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
