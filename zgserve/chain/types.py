"""Typed values of the two official contracts. Money is ``int`` neuron; addresses are checksummed.

Field order and meaning follow the contracts' ABI tuples (spec §1.1); each class converts from
the decoded ABI tuple with ``from_abi`` and, where the contract takes it as input, back with
``to_abi``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from eth_utils.address import to_checksum_address


class SettlementStatus(IntEnum):
    """Per-entry outcome of ``settleFeesWithTEE``.

    Must match the contract's ``SettlementStatus`` enum (InferenceServing); the values are
    emitted in ``TEESettlementResult`` events and returned by ``previewSettlementResults``.
    """

    SUCCESS = 0
    PARTIAL = 1
    PROVIDER_MISMATCH = 2
    NO_TEE_SIGNER = 3
    INVALID_NONCE = 4
    INVALID_SIGNATURE = 5


@dataclass(frozen=True, slots=True)
class Refund:
    """One refund slot of a sub-account; only ``Account.live_refunds`` are in effect."""

    index: int
    amount: int
    created_at: int
    processed: bool

    @classmethod
    def from_abi(cls, t: tuple[Any, ...]) -> Refund:
        return cls(index=t[0], amount=t[1], created_at=t[2], processed=t[3])


@dataclass(frozen=True, slots=True)
class Account:
    """A user's sub-account with one provider (``InferenceServing.getAccount``)."""

    user: str
    provider: str
    nonce: int
    balance: int
    pending_refund: int
    refunds: tuple[Refund, ...]
    additional_info: str
    acknowledged: bool
    valid_refunds_length: int
    generation: int
    revoked_bitmap: int

    @classmethod
    def from_abi(cls, t: tuple[Any, ...]) -> Account:
        return cls(
            user=t[0],
            provider=t[1],
            nonce=t[2],
            balance=t[3],
            pending_refund=t[4],
            refunds=tuple(Refund.from_abi(r) for r in t[5]),
            additional_info=t[6],
            acknowledged=t[7],
            valid_refunds_length=t[8],
            generation=t[9],
            revoked_bitmap=t[10],
        )

    @property
    def live_refunds(self) -> tuple[Refund, ...]:
        """The refunds in effect: slots past ``valid_refunds_length`` are stale leftovers."""
        return self.refunds[: self.valid_refunds_length]

    @property
    def available(self) -> int:
        """What fees may still take without eating into pending refunds."""
        return self.balance - self.pending_refund

    @property
    def exists(self) -> bool:
        """False for the zeroed struct ``getBatchAccountsByUsers`` returns for missing accounts."""
        return int(self.user, 16) != 0

    def is_token_revoked(self, token_id: int) -> bool:
        """Whether persistent token ``token_id`` (0..254) is revoked in ``revoked_bitmap``."""
        return bool(self.revoked_bitmap >> token_id & 1)


@dataclass(frozen=True, slots=True)
class ServiceParams:
    """Input of ``addOrUpdateService``. Prices are neuron per token."""

    service_type: str
    url: str
    model: str
    verifiability: str
    input_price: int
    output_price: int
    additional_info: str
    tee_signer_address: str

    def to_abi(self) -> tuple[Any, ...]:
        return (
            self.service_type,
            self.url,
            self.model,
            self.verifiability,
            self.input_price,
            self.output_price,
            self.additional_info,
            to_checksum_address(self.tee_signer_address),
        )


@dataclass(frozen=True, slots=True)
class Service:
    """A provider's registered service (``InferenceServing.getService``)."""

    provider: str
    service_type: str
    url: str
    input_price: int
    output_price: int
    updated_at: int
    model: str
    verifiability: str
    additional_info: str
    tee_signer_address: str
    tee_signer_acknowledged: bool

    @classmethod
    def from_abi(cls, t: tuple[Any, ...]) -> Service:
        return cls(*t)

    def params(self) -> ServiceParams:
        """The parameters that would register this service unchanged."""
        return ServiceParams(
            service_type=self.service_type,
            url=self.url,
            model=self.model,
            verifiability=self.verifiability,
            input_price=self.input_price,
            output_price=self.output_price,
            additional_info=self.additional_info,
            tee_signer_address=self.tee_signer_address,
        )


@dataclass(frozen=True, slots=True)
class Ledger:
    """A user's main ledger (``LedgerManager.getLedger``)."""

    user: str
    available_balance: int
    total_balance: int
    additional_info: str

    @classmethod
    def from_abi(cls, t: tuple[Any, ...]) -> Ledger:
        return cls(*t)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """An entry of the ledger's service registry (``LedgerManager.getServiceInfo``)."""

    service_address: str
    service_contract: str
    service_type: str
    version: str
    full_name: str
    description: str
    is_recommended: bool
    registered_at: int

    @classmethod
    def from_abi(cls, t: tuple[Any, ...]) -> ServiceInfo:
        return cls(*t)


@dataclass(frozen=True, slots=True)
class TEESettlementData:
    """One settlement entry, signed with EIP-712 by the service's TEE signer (see ``eip712``)."""

    user: str
    provider: str
    total_fee: int
    requests_hash: bytes
    nonce: int
    signature: bytes = field(repr=False)

    def to_abi(self) -> tuple[Any, ...]:
        return (
            to_checksum_address(self.user),
            to_checksum_address(self.provider),
            self.total_fee,
            self.requests_hash,
            self.nonce,
            self.signature,
        )


@dataclass(frozen=True, slots=True)
class SettlementResult:
    """Outcome for one user, from a ``TEESettlementResult`` event."""

    user: str
    status: SettlementStatus
    unsettled: int


@dataclass(frozen=True, slots=True)
class SettlementPreview:
    """``previewSettlementResults``: failures (with reasons) and partial settlements.

    The preview checks each entry against current state only; repeated users inside one
    batch are not simulated (the second entry of a user with the same nonce still shows ok).
    """

    failed: tuple[tuple[str, SettlementStatus], ...]
    partial: tuple[tuple[str, int], ...]

    @property
    def all_succeed(self) -> bool:
        return not self.failed and not self.partial

    @classmethod
    def from_abi(cls, t: tuple[Any, ...]) -> SettlementPreview:
        failed_users, reasons, partial_users, partial_amounts = t
        return cls(
            failed=tuple(zip(failed_users, (SettlementStatus(r) for r in reasons), strict=True)),
            partial=tuple(zip(partial_users, partial_amounts, strict=True)),
        )
