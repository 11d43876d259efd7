"""``zgserve broker --config provider.yaml``: run the provider broker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from zgserve.common.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("broker", help="Run the provider broker (auth, billing, records, registration).")(broker)
    config_app = typer.Typer(help="Broker configuration files (ours or the official broker's layout).")
    config_app.command("check", help="Validate a file; print the effective configuration, secrets masked.")(
        check_config
    )
    app.add_typer(config_app, name="config")


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


def check_config(
    file: Path = typer.Argument(..., help="Provider YAML, ours or the official broker's config.yaml."),
) -> None:
    import yaml

    from zgserve.broker.official_config import translate
    from zgserve.broker.settings import load_settings

    try:
        settings = load_settings(file)
        # Read again for the report: load_settings logs the ignored keys, check prints them.
        raw = yaml.safe_load(file.read_text()) or {}
        translation = translate(raw)
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    effective = settings.model_dump(mode="json", by_alias=True)  # SecretStr dumps as "**********"
    database = effective.get("database", {})
    database["url"] = mask_url_password(str(database.get("url", "")))
    layout = "official broker layout (translated)" if translation.official else "zgserve layout"
    typer.echo(f"# {file}: valid, {layout}")
    typer.echo(yaml.safe_dump(effective, sort_keys=False).rstrip())
    if translation.unimplemented:
        typer.echo("# official keys not implemented (ignored):")
        for key in translation.unimplemented:
            typer.echo(f"#   {key}")


def mask_url_password(url: str) -> str:
    """``scheme://user:secret@host/db`` → ``scheme://user:****@host/db`` (other URLs unchanged)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:****@{host}"


def broker(
    config: Path = typer.Option(..., "--config", "-c", help="Provider YAML (see config.example.yaml)."),
    host: str | None = typer.Option(None, help="Listen address (default from the config: server.host)."),
    port: int | None = typer.Option(None, help="Listen port (default from the config: server.port)."),
) -> None:
    import uvicorn

    from zgserve.broker.app import BrokerDeps, create_app
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
        create_app(settings, BrokerDeps(config_file=config)),
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
