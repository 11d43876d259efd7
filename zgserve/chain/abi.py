"""A small ABI codec for the two official contracts, and where their ABIs come from.

The ABIs are never stored in this repository. They are read, in this order, from:

1. an explicit directory (``NetworkConfig.abi_dir`` or the ``ZGSERVE_ABI_DIR`` environment
   variable) holding ``LedgerManager.json`` and ``InferenceServing.json``; each file is either
   the bare ABI list or an object with an ``"abi"`` key (the files that
   :mod:`zgserve.devnet.artifacts` caches under ``.zg/artifacts/sdk-<version>/`` qualify, so
   copying that folder is enough on a machine without Node);
2. the official SDK package installed under ``node/`` (via :mod:`zgserve.devnet.artifacts`,
   cached after the first read);
3. without Node tools, the SDK's npm tarball read in pure Python (:mod:`zgserve.chain.sdk_abi`),
   cached under ``~/.cache/zgserve``.

Decoded addresses are always checksummed; everything else is what ``eth_abi`` returns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.grammar import ABIType, TupleType, parse
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from zgserve.common.errors import ConfigError

ABI_DIR_ENV = "ZGSERVE_ABI_DIR"
LEDGER = "LedgerManager"
INFERENCE = "InferenceServing"

AbiEntry = Mapping[str, Any]


def _types(params: Sequence[AbiEntry]) -> tuple[str, ...]:
    return tuple(collapse_if_tuple(dict(p)) for p in params)


def _signature(entry: AbiEntry) -> str:
    return f"{entry['name']}({','.join(_types(entry.get('inputs', ())))})"


def _normalize(abi_type: ABIType, value: Any) -> Any:
    """Checksum every address inside ``value`` (eth_abi returns them lower-case)."""
    if abi_type.is_array:
        item = abi_type.item_type
        return tuple(_normalize(item, v) for v in value)
    if isinstance(abi_type, TupleType):
        return tuple(_normalize(c, v) for c, v in zip(abi_type.components, value, strict=True))
    if getattr(abi_type, "base", None) == "address":
        return to_checksum_address(value)
    return value


def _decode(types: Sequence[str], data: bytes) -> tuple[Any, ...]:
    values = decode(list(types), data)
    return tuple(_normalize(parse(t), v) for t, v in zip(types, values, strict=True))


@dataclass(frozen=True, slots=True)
class AbiFunction:
    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    mutability: str


@dataclass(frozen=True, slots=True)
class AbiError:
    """A custom Solidity error: ``name(inputs)`` with the 4-byte ``selector``."""

    name: str
    selector: bytes
    names: tuple[str, ...]
    types: tuple[str, ...]

    def decode_args(self, data: bytes) -> dict[str, Any]:
        """Decode the arguments that follow the selector in revert data."""
        values = _decode(self.types, data[4:])
        return dict(zip(self.names, values, strict=True))


@dataclass(frozen=True, slots=True)
class AbiEvent:
    name: str
    topic0: bytes
    names: tuple[str, ...]
    types: tuple[str, ...]
    indexed: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """One decoded log entry."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    tx_hash: str
    log_index: int


class ContractAbi:
    """Encode calls and decode results, errors and logs for one contract's ABI."""

    def __init__(self, name: str, abi: Sequence[AbiEntry]) -> None:
        self.name = name
        self.entries: tuple[AbiEntry, ...] = tuple(abi)
        self.functions: dict[str, AbiFunction] = {}
        self.errors: dict[bytes, AbiError] = {}
        self.events: dict[str, AbiEvent] = {}
        self.constructor_inputs: tuple[str, ...] = ()
        for entry in abi:
            kind = entry.get("type")
            if kind == "function":
                sig = _signature(entry)
                self.functions[entry["name"]] = AbiFunction(
                    entry["name"],
                    keccak(text=sig)[:4],
                    _types(entry.get("inputs", ())),
                    _types(entry.get("outputs", ())),
                    entry.get("stateMutability", "nonpayable"),
                )
            elif kind == "error":
                selector = keccak(text=_signature(entry))[:4]
                inputs = entry.get("inputs", ())
                names = tuple(p.get("name") or f"arg{i}" for i, p in enumerate(inputs))
                self.errors[selector] = AbiError(entry["name"], selector, names, _types(inputs))
            elif kind == "event":
                inputs = entry.get("inputs", ())
                self.events[entry["name"]] = AbiEvent(
                    entry["name"],
                    keccak(text=_signature(entry)),
                    tuple(p.get("name") or f"arg{i}" for i, p in enumerate(inputs)),
                    _types(inputs),
                    tuple(bool(p.get("indexed")) for p in inputs),
                )
            elif kind == "constructor":
                self.constructor_inputs = _types(entry.get("inputs", ()))

    def function(self, name: str) -> AbiFunction:
        try:
            return self.functions[name]
        except KeyError:
            raise KeyError(f"{self.name} has no function {name!r}") from None

    def encode_call(self, name: str, args: Sequence[Any]) -> bytes:
        """Calldata for ``name(*args)``: selector followed by the ABI-encoded arguments."""
        fn = self.function(name)
        return fn.selector + encode(list(fn.inputs), list(args))

    def decode_output(self, name: str, data: bytes) -> tuple[Any, ...]:
        """The return values of ``name``, addresses checksummed."""
        return _decode(self.function(name).outputs, data)

    def encode_constructor(self, args: Sequence[Any]) -> bytes:
        return encode(list(self.constructor_inputs), list(args)) if self.constructor_inputs else b""

    def decode_log(self, log: Mapping[str, Any]) -> DecodedEvent | None:
        """Decode a raw log (as returned by ``eth_getLogs`` or in a receipt); None if unknown."""
        topics = [bytes(t) for t in log["topics"]]
        if not topics:
            return None
        for event in self.events.values():
            if event.topic0 == topics[0]:
                return _decode_event(event, topics[1:], bytes(log["data"]), log)
        return None


def _decode_event(event: AbiEvent, topics: list[bytes], data: bytes, log: Mapping[str, Any]) -> DecodedEvent:
    plain = [t for t, ix in zip(event.types, event.indexed, strict=True) if not ix]
    plain_values = iter(_decode(plain, data))
    indexed_topics = iter(topics)
    args: dict[str, Any] = {}
    for name, abi_type, is_indexed in zip(event.names, event.types, event.indexed, strict=True):
        if not is_indexed:
            args[name] = next(plain_values)
            continue
        topic = next(indexed_topics)
        parsed = parse(abi_type)
        # Indexed dynamic values are stored as their keccak hash; keep the hash.
        if parsed.is_dynamic:
            args[name] = topic
        else:
            args[name] = _decode([abi_type], topic)[0]
    tx_hash = log["transactionHash"]
    return DecodedEvent(
        name=event.name,
        args=args,
        address=to_checksum_address(log["address"]),
        block_number=int(log["blockNumber"]),
        tx_hash=tx_hash if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex(),
        log_index=int(log["logIndex"]),
    )


@dataclass(frozen=True, slots=True)
class ContractAbis:
    """The ABIs of the two official contracts."""

    ledger: ContractAbi
    inference: ContractAbi

    def error_for(self, selector: bytes) -> AbiError | None:
        """The custom error with this selector, in either contract."""
        return self.inference.errors.get(selector) or self.ledger.errors.get(selector)


def _read_abi_file(path: Path) -> list[AbiEntry]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the ABI file {path}: {exc}") from exc
    abi = data["abi"] if isinstance(data, dict) else data
    if not isinstance(abi, list):
        raise ConfigError(f"{path} holds no ABI list")
    return abi


def load_contract_abis(abi_dir: Path | None = None) -> ContractAbis:
    """The two ABIs, from ``abi_dir``, ``$ZGSERVE_ABI_DIR``, or the official SDK package.

    May run Node once (then cached), so call it from a thread in async code.
    """
    directory = abi_dir or (Path(os.environ[ABI_DIR_ENV]) if os.environ.get(ABI_DIR_ENV) else None)
    if directory is not None:
        return ContractAbis(
            ledger=ContractAbi(LEDGER, _read_abi_file(directory / f"{LEDGER}.json")),
            inference=ContractAbi(INFERENCE, _read_abi_file(directory / f"{INFERENCE}.json")),
        )
    # Imported here: the SDK reader lives with the other Node tooling and is only
    # needed when no ABI directory was given.
    from zgserve.devnet.artifacts import sdk_artifacts
    from zgserve.devnet.node import NodeToolsMissing

    try:
        artifacts = sdk_artifacts()
    except NodeToolsMissing:
        # A plain `pip install` (no repository, no Node): read the SDK tarball directly.
        from zgserve.chain.sdk_abi import cached_registry_abis

        abis = cached_registry_abis()
        return ContractAbis(
            ledger=ContractAbi(LEDGER, abis[LEDGER]), inference=ContractAbi(INFERENCE, abis[INFERENCE])
        )
    return ContractAbis(
        ledger=ContractAbi(LEDGER, artifacts[LEDGER].abi),
        inference=ContractAbi(INFERENCE, artifacts[INFERENCE].abi),
    )
