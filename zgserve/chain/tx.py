"""Transaction values shared by the client, wallets and contract wrappers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import rlp
from eth_utils.address import to_checksum_address

# A block number or tag, as JSON-RPC takes it.
BlockId = int | Literal["latest", "earliest", "pending", "safe", "finalized"]


@dataclass(frozen=True, slots=True)
class ContractCall:
    """A transaction payload: target (``None`` deploys ``data``), calldata, value, and a label."""

    to: str | None
    data: bytes
    value: int = 0
    label: str = ""

    def as_dict(self, sender: str | None = None) -> dict[str, Any]:
        tx: dict[str, Any] = {"data": self.data, "value": self.value}
        if self.to is not None:
            tx["to"] = self.to
        if sender is not None:
            tx["from"] = sender
        return tx


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction. ``fee`` is what the sender paid for gas, in neuron."""

    tx_hash: str
    block_number: int
    status: int
    gas_used: int
    effective_gas_price: int
    sender: str
    contract_address: str | None
    logs: tuple[Mapping[str, Any], ...] = field(repr=False)

    @property
    def fee(self) -> int:
        return self.gas_used * self.effective_gas_price

    @classmethod
    def from_rpc(cls, r: Mapping[str, Any]) -> Receipt:
        created = r.get("contractAddress")
        return cls(
            tx_hash=_hex(r["transactionHash"]),
            block_number=int(r["blockNumber"]),
            status=int(r["status"]),
            gas_used=int(r["gasUsed"]),
            effective_gas_price=int(r.get("effectiveGasPrice") or 0),
            sender=to_checksum_address(r["from"]),
            contract_address=to_checksum_address(created) if created else None,
            logs=tuple(r.get("logs", ())),
        )


def _hex(value: Any) -> str:
    return value if isinstance(value, str) else "0x" + bytes(value).hex()


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed, not yet broadcast, transaction."""

    raw: bytes
    tx_hash: str
    nonce: int
    sender: str
    gas: int
    gas_price: int


@dataclass(frozen=True, slots=True)
class LegacyTx:
    """The fields of a signed legacy (type 0, EIP-155) transaction, signature left out."""

    nonce: int
    gas_price: int
    gas: int
    to: str | None
    value: int
    data: bytes
    chain_id: int | None  # None: signed without replay protection (pre-EIP-155)

    @property
    def call(self) -> ContractCall:
        return ContractCall(to=self.to, data=self.data, value=self.value)


def decode_legacy(raw: bytes) -> LegacyTx:
    """Decode a signed legacy transaction (what :class:`~zgserve.chain.wallet.Wallet` signs)."""
    if not raw or raw[0] < 0xC0:  # an RLP list; typed envelopes start with their type byte
        raise ValueError("not a legacy transaction")
    fields = rlp.decode(raw)
    if not isinstance(fields, list) or len(fields) != 9 or not all(isinstance(f, bytes) for f in fields):
        raise ValueError("not a signed legacy transaction")
    nonce, gas_price, gas, to, value, data, v, _r, _s = (bytes(f) for f in fields)
    v_int = int.from_bytes(v, "big")
    return LegacyTx(
        nonce=int.from_bytes(nonce, "big"),
        gas_price=int.from_bytes(gas_price, "big"),
        gas=int.from_bytes(gas, "big"),
        to=to_checksum_address(to) if to else None,
        value=int.from_bytes(value, "big"),
        data=data,
        chain_id=(v_int - 35) // 2 if v_int >= 35 else None,
    )
