"""``zgserve broker --config provider.yaml``: run the provider broker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from zgserve.common.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("broker", help="Run the provider broker (auth, billing, records, registration).")(broker)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (never request bodies or keys)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def broker(
    config: Path = typer.Option(..., "--config", "-c", help="Provider YAML (see config.example.yaml)."),
    host: str | None = typer.Option(None, help="Listen address (default from the config: server.host)."),
    port: int | None = typer.Option(None, help="Listen port (default from the config: server.port)."),
) -> None:
    import uvicorn

    from zgserve.broker.app import create_app
    from zgserve.broker.settings import load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    root = logging.getLogger()
    root.setLevel(settings.logging.level)
    if settings.logging.json_format:
        for handler in root.handlers or [logging.StreamHandler()]:
            handler.setFormatter(JsonLogFormatter())
            if handler not in root.handlers:
                root.addHandler(handler)
    uvicorn.run(
        create_app(settings),
        host=host or settings.server.host,
        port=port or settings.server.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        proxy_headers=False,  # the admin API trusts the socket peer only, never X-Forwarded-For
        timeout_graceful_shutdown=10,
    )
