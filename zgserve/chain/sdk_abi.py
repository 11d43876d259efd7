"""Read the official contracts' ABIs from the SDK package without Node.

The SDK ships its typechain factories as CommonJS files that hold the ABI as a JavaScript
array literal (``const _abi = [...]``). This module turns that literal into JSON with a tiny
tokenizer (single-quoted strings, bare keys, trailing commas), so a user or a provider that
has only ``pip install zgserve`` can talk to the contracts: the package tarball is fetched
once from the npm registry and the ABIs are cached under ``~/.cache/zgserve``.
A test checks that the result equals what Node itself reads from the same files.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from zgserve.common.errors import ConfigError

SDK_NAME = "@0gfoundation/0g-compute-ts-sdk"
SDK_VERSION = "0.9.0"
REGISTRY_ENV = "ZGSERVE_NPM_REGISTRY"
FACTORIES = {
    "LedgerManager": "lib.commonjs/ledger/contract/typechain/factories/LedgerManager__factory.js",
    "InferenceServing": "lib.commonjs/inference/contract/typechain/factories/InferenceServing__factory.js",
}


def js_literal_to_json(text: str) -> Any:
    """Parse a JavaScript array/object literal made of strings, numbers, booleans and nesting."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            j, buf = i + 1, []
            while text[j] != ch:
                if text[j] == "\\":
                    buf.append(text[j + 1])
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            out.append(json.dumps("".join(buf)))
            i = j + 1
        elif ch.isalpha() or ch in "_$":
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            word = text[i:j]
            k = j
            while k < n and text[k].isspace():
                k += 1
            is_key = k < n and text[k] == ":"
            out.append(json.dumps(word) if is_key else word)
            i = j
        elif ch == ",":
            # Trailing commas are legal in JavaScript, not in JSON.
            k = i + 1
            while k < n and text[k].isspace():
                k += 1
            if k >= n or text[k] not in "]}":
                out.append(ch)
            i += 1
        else:
            out.append(ch)
            i += 1
    return json.loads("".join(out))


def abi_from_factory_source(source: str) -> list[dict[str, Any]]:
    """The ``_abi`` array of one typechain factory file."""
    start = source.find("const _abi = ")
    end = source.find("];", start)
    if start < 0 or end < 0:
        raise ConfigError("the SDK factory file has no `const _abi = [...]` literal")
    abi: list[dict[str, Any]] = js_literal_to_json(source[start + len("const _abi = ") : end + 1])
    return abi


def abis_from_package_dir(package: Path) -> dict[str, list[dict[str, Any]]]:
    """ABIs from an unpacked SDK package folder."""
    return {name: abi_from_factory_source((package / rel).read_text()) for name, rel in FACTORIES.items()}


def _registry_tarball_url() -> str:
    registry = os.environ.get(REGISTRY_ENV, "https://registry.npmjs.org").rstrip("/")
    return f"{registry}/{SDK_NAME}/-/{SDK_NAME.split('/')[1]}-{SDK_VERSION}.tgz"


def abis_from_registry(timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
    """Download the SDK tarball from the npm registry and read the ABIs from it."""
    url = _registry_tarball_url()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            blob = resp.read()
    except OSError as exc:
        raise ConfigError(
            f"the contract ABIs are not available: no ABI directory, no Node tools, and {url} "
            f"could not be fetched ({exc}); set ZGSERVE_ABI_DIR or run `make install`"
        ) from exc
    result: dict[str, list[dict[str, Any]]] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for name, rel in FACTORIES.items():
            member = tar.extractfile(f"package/{rel}")
            if member is None:
                raise ConfigError(f"{rel} is missing from {url}")
            result[name] = abi_from_factory_source(member.read().decode())
    return result


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zgserve" / "abi" / f"sdk-{SDK_VERSION}"


def cached_registry_abis() -> dict[str, list[dict[str, Any]]]:
    """Registry ABIs, cached as ``<Name>.json`` in :func:`user_cache_dir`."""
    folder = user_cache_dir()
    try:
        return {name: json.loads((folder / f"{name}.json").read_text()) for name in FACTORIES}
    except (OSError, ValueError):
        pass
    abis = abis_from_registry()
    folder.mkdir(parents=True, exist_ok=True)
    for name, abi in abis.items():
        tmp = folder / f".{name}.json.tmp"
        tmp.write_text(json.dumps(abi))
        tmp.replace(folder / f"{name}.json")
    return abis
