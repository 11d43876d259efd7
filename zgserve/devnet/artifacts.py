"""Contract artifacts (ABI and bytecode) produced at run time, never stored in the repository.

* ``LedgerManager`` and ``InferenceServing`` come from the typechain factories of the official
  SDK package (``@0gfoundation/0g-compute-ts-sdk``), read by one small Node call and cached
  under ``.zg/artifacts/sdk-<version>/<Name>.json``.
* ``ZgProxy`` (an ERC-1967 proxy, ``contracts/ZgProxy.sol``) is compiled with the npm ``solc``
  package and cached under ``.zg/artifacts/proxy-<hash>.json``; the hash covers the source,
  the compiler, OpenZeppelin's version and the EVM target, so any change recompiles.

Reads are synchronous (they may run Node); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zgserve.devnet.node import (
    SDK_PACKAGE,
    cache_dir,
    node_modules,
    package_dir,
    package_version,
    run_node_script,
)

_HERE = Path(__file__).resolve().parent
PROXY_SOURCE = _HERE / "contracts" / "ZgProxy.sol"
# The fork anvil runs by default and 0G's chains support; pinned so the bytecode is stable.
PROXY_EVM_VERSION = "cancun"
SDK_CONTRACTS = ("LedgerManager", "InferenceServing")


@dataclass(frozen=True, slots=True)
class ContractArtifact:
    """A compiled contract: its ABI and creation bytecode (``0x``-prefixed hex)."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str

    @property
    def creation_code(self) -> bytes:
        return bytes.fromhex(self.bytecode.removeprefix("0x"))


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    # Several processes (test workers, CLI runs) may fill the cache at once; a rename is atomic.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o644)  # public data; mkstemp makes files private
    os.replace(tmp, path)


def _read_cached(path: Path, name: str) -> ContractArtifact | None:
    try:
        data = json.loads(path.read_text())
        return ContractArtifact(name, data["abi"], data["bytecode"])
    except (OSError, ValueError, KeyError):
        return None


def sdk_cache_dir(version: str | None = None) -> Path:
    """The cache folder for one SDK version (the installed one by default)."""
    return cache_dir() / "artifacts" / f"sdk-{version or package_version(SDK_PACKAGE)}"


def sdk_artifacts() -> dict[str, ContractArtifact]:
    """ABI and bytecode of ``LedgerManager`` and ``InferenceServing`` from the official SDK."""
    folder = sdk_cache_dir()
    cached = {name: _read_cached(folder / f"{name}.json", name) for name in SDK_CONTRACTS}
    if all(cached.values()):
        return {name: art for name, art in cached.items() if art is not None}
    sdk = package_dir(SDK_PACKAGE)
    raw = json.loads(run_node_script(_HERE / "js" / "sdk_artifacts.js", str(sdk)))
    result: dict[str, ContractArtifact] = {}
    for name in SDK_CONTRACTS:
        entry = raw[name]
        _write_atomic(folder / f"{name}.json", {"abi": entry["abi"], "bytecode": entry["bytecode"]})
        result[name] = ContractArtifact(name, entry["abi"], entry["bytecode"])
    return result


def _proxy_cache_key() -> str:
    h = hashlib.sha256()
    h.update(PROXY_SOURCE.read_bytes())
    h.update(PROXY_EVM_VERSION.encode())
    for package in ("solc", "@openzeppelin/contracts"):
        h.update(f"{package}@{package_version(package)}".encode())
    return h.hexdigest()[:16]


def proxy_artifact() -> ContractArtifact:
    """The ERC-1967 proxy, compiled from ``contracts/ZgProxy.sol`` on first use (a few seconds)."""
    path = cache_dir() / "artifacts" / f"proxy-{_proxy_cache_key()}.json"
    cached = _read_cached(path, "ZgProxy")
    if cached is not None:
        return cached
    out = json.loads(
        run_node_script(
            _HERE / "js" / "compile_solidity.js",
            str(node_modules()),
            str(PROXY_SOURCE),
            PROXY_EVM_VERSION,
        )
    )
    entry = out["contracts"]["ZgProxy"]
    _write_atomic(path, {"abi": entry["abi"], "bytecode": entry["bytecode"], "solc": out["version"]})
    return ContractArtifact("ZgProxy", entry["abi"], entry["bytecode"])


@dataclass(frozen=True, slots=True)
class DevnetArtifacts:
    """Everything a devnet deployment needs."""

    ledger: ContractArtifact
    inference: ContractArtifact
    proxy: ContractArtifact


def devnet_artifacts() -> DevnetArtifacts:
    """The two official contracts and the proxy (cached after the first call)."""
    sdk = sdk_artifacts()
    return DevnetArtifacts(
        ledger=sdk["LedgerManager"], inference=sdk["InferenceServing"], proxy=proxy_artifact()
    )
