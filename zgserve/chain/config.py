"""Which chain and contracts to talk to, and how to send transactions there.

The same code runs against the local devnet, the 0G testnet (chain id 16602) or mainnet
(16661): only this configuration changes. Contract addresses are always given explicitly
(for a devnet, :meth:`NetworkConfig.from_deployment` takes them from the deployment file);
the SDK's own defaults for the public networks are in its ``constants.js``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from eth_utils.address import is_address, to_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from zgserve.devnet.deployment import Deployment

TESTNET_CHAIN_ID = 16602
MAINNET_CHAIN_ID = 16661
ANVIL_CHAIN_ID = 31337
KNOWN_CHAINS = {
    TESTNET_CHAIN_ID: "0G Galileo testnet",
    MAINNET_CHAIN_ID: "0G mainnet",
    ANVIL_CHAIN_ID: "local devnet (anvil)",
}
INFERENCE_SERVICE_NAME = "inference-v1.0"


def _checksum(value: str) -> str:
    if not is_address(value):
        raise ValueError(f"not an address: {value!r}")
    return str(to_checksum_address(value))


Address = Annotated[str, AfterValidator(_checksum)]


class TxPolicy(BaseModel):
    """How transactions are priced, retried and awaited.

    Gas is ``eth_estimateGas`` plus ``gas_buffer_percent``; the gas price is ``eth_gasPrice``
    plus ``gas_price_buffer_percent``, clamped to ``[gas_price_floor, gas_price_cap]``
    (a cap below the network price means the transaction waits, which beats overpaying).
    Transient RPC failures (connection errors, timeouts, HTTP 429/5xx) are retried
    ``max_retries`` times with exponential backoff from ``backoff_initial_s`` to ``backoff_max_s``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    gas_buffer_percent: int = Field(default=25, ge=0, le=500)
    # 0 by default: eth_gasPrice already carries the node's tip suggestion, and nodes that
    # derive that suggestion from recent tips (anvil does) would otherwise see every
    # transaction's markup come back in the next suggestion and climb ~10% per transaction.
    gas_price_buffer_percent: int = Field(default=0, ge=0, le=500)
    gas_price_floor: int = Field(default=0, ge=0)
    gas_price_cap: int | None = Field(default=None, ge=1)
    max_retries: int = Field(default=4, ge=0, le=20)
    backoff_initial_s: float = Field(default=0.2, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    receipt_timeout_s: float = Field(default=120.0, gt=0)
    receipt_poll_s: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _floor_below_cap(self) -> TxPolicy:
        if self.gas_price_cap is not None and self.gas_price_cap < self.gas_price_floor:
            raise ValueError("gas_price_cap is below gas_price_floor")
        return self

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2**attempt))

    def clamp_gas_price(self, suggested: int) -> int:
        price = suggested * (100 + self.gas_price_buffer_percent) // 100
        price = max(price, self.gas_price_floor)
        return min(price, self.gas_price_cap) if self.gas_price_cap is not None else price

    def gas_limit(self, estimate: int) -> int:
        return estimate * (100 + self.gas_buffer_percent) // 100


class NetworkConfig(BaseModel):
    """One EVM network and the two 0G contracts on it.

    ``ledger``/``inference`` are the proxy addresses; they may be omitted only by code that
    talks to no contract yet (the devnet deployer).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpc_url: str
    chain_id: int = Field(gt=0)
    ledger: Address | None = None
    inference: Address | None = None
    service_name: str = INFERENCE_SERVICE_NAME
    tx_policy: TxPolicy = TxPolicy()
    rpc_timeout_s: float = Field(default=30.0, gt=0)
    abi_dir: Path | None = None

    @classmethod
    def from_deployment(cls, deployment: Deployment, *, tx_policy: TxPolicy | None = None) -> NetworkConfig:
        """The configuration that reaches a deployment written by ``zgserve devnet``."""
        return cls(
            rpc_url=deployment.rpc_url,
            chain_id=deployment.chain_id,
            ledger=deployment.contracts.ledger,
            inference=deployment.contracts.inference,
            service_name=deployment.service_name,
            tx_policy=tx_policy or TxPolicy(),
        )

    @property
    def chain_name(self) -> str:
        return KNOWN_CHAINS.get(self.chain_id, f"chain {self.chain_id}")
