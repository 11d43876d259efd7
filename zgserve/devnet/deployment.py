"""The deployment file: one JSON definition of a network that every command and test shares.

Written by ``zgserve devnet``; may also be written by hand for the testnet or mainnet (then
``owner``/``provider``/``users`` are usually absent and keys come from elsewhere)::

    {
      "chainId": 31337,
      "rpcUrl": "http://127.0.0.1:8545",
      "contracts": {"ledger": "0x…", "inference": "0x…",
                    "ledgerImplementation": "0x…", "inferenceImplementation": "0x…"},
      "serviceName": "inference-v1.0",
      "lockTime": 3600,
      "owner": {"address": "0x…", "privateKey": "0x…"},
      "provider": {"address": "0x…", "privateKey": "0x…"},
      "users": [{"address": "0x…", "privateKey": "0x…"}],
      "anvilPid": 12345
    }
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from zgserve.chain.config import INFERENCE_SERVICE_NAME, Address
from zgserve.common.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class DevAccount(_Model):
    """A funded test account. Its key is a throw-away development key, never a real one."""

    address: Address
    private_key: str = Field(repr=False)


class ContractAddresses(_Model):
    """Proxy addresses (what everyone talks to) and the implementations behind them."""

    ledger: Address
    inference: Address
    ledger_implementation: Address | None = None
    inference_implementation: Address | None = None


class Deployment(_Model):
    """A network with the two official contracts on it."""

    chain_id: int
    rpc_url: str
    contracts: ContractAddresses
    service_name: str = INFERENCE_SERVICE_NAME
    lock_time: int | None = None
    owner: DevAccount | None = None
    provider: DevAccount | None = None
    users: tuple[DevAccount, ...] = ()
    anvil_pid: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write atomically (a reader never sees half a file); the file is private (0600)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_json())
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        """Read a deployment file; a missing or malformed file stops with a message naming it."""
        source = Path(path)
        try:
            text = source.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read deployment file {source}: {exc.strerror}") from exc
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"invalid deployment file {source}: {exc}") from exc
