"""Where the Node tools live (anvil, the official 0G SDK, solc, OpenZeppelin) and how to run them.

They are installed by ``make install`` into the repository's ``node/`` folder; the
environment variable ``ZGSERVE_NODE_DIR`` points elsewhere (the folder that holds
``node_modules``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from zgserve.common.errors import ConfigError

NODE_DIR_ENV = "ZGSERVE_NODE_DIR"
CACHE_DIR_ENV = "ZGSERVE_CACHE_DIR"
SDK_PACKAGE = "@0gfoundation/0g-compute-ts-sdk"
ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64"


class NodeToolsMissing(ConfigError):
    """The Node tools (or Node itself) are not installed."""

    code = "node_tools_missing"


def project_root() -> Path:
    """The repository root: the folder that holds the ``zgserve`` package."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where generated files are cached: ``$ZGSERVE_CACHE_DIR`` or ``<repo>/.zg``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else project_root() / ".zg"


def node_modules() -> Path:
    """The ``node_modules`` folder with the pinned Node tools."""
    env = os.environ.get(NODE_DIR_ENV)
    base = Path(env) if env else project_root() / "node"
    modules = base / "node_modules"
    if not modules.is_dir():
        raise NodeToolsMissing(f"Node tools not found in {modules}; run `make install`")
    return modules


def package_dir(package: str) -> Path:
    """The installed folder of one npm package."""
    path = node_modules() / package
    if not (path / "package.json").is_file():
        raise NodeToolsMissing(f"npm package {package} is not installed in {path.parent}; run `make install`")
    return path


def package_version(package: str) -> str:
    """The installed version of one npm package (read from its package.json, no Node needed)."""
    version: str = json.loads((package_dir(package) / "package.json").read_text())["version"]
    return version


def anvil_binary() -> Path:
    """The anvil executable from the npm package."""
    path = package_dir(ANVIL_PACKAGE) / "bin" / "anvil"
    if not path.is_file():
        raise NodeToolsMissing(f"anvil not found at {path}; run `make install`")
    return path


def node_executable() -> str:
    """The ``node`` binary on PATH."""
    node = shutil.which("node")
    if node is None:
        raise NodeToolsMissing("`node` is not on PATH (Node.js >= 20 is needed); run `make install`")
    return node


def run_node_script(script: Path, *args: str, timeout: float = 120.0) -> str:
    """Run a JavaScript file with Node and return its stdout; raise with stderr on failure."""
    try:
        done = subprocess.run(
            [node_executable(), str(script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=node_modules().parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeToolsMissing(f"{script.name} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise NodeToolsMissing(f"{script.name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout
