"""The ``zgserve`` command: one typer app, one sub-command group per component.

Each component's ``cli.py`` exposes ``register(app)``; nothing is imported from a
component until its command runs, so ``zgserve --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="zgserve",
    help="Provider stack for the 0G Compute Network: verifiable LLM service, broker, settlement.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Components whose ``cli.register(app)`` adds commands; listed once, here.
COMPONENTS = ("devnet", "service", "broker", "broker.settlement", "client", "stack")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register_components() -> None:
    for name in COMPONENTS:
        try:
            module = importlib.import_module(f"zgserve.{name}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"zgserve.{name}" and exc.name != f"zgserve.{name}.cli":
                raise
            continue
        module.register(app)


def main() -> None:
    _register_components()
    app()
