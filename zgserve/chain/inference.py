"""Typed wrapper of the official ``InferenceServing`` contract (spec §1.3)."""

from __future__ import annotations

from collections.abc import Sequence

from zgserve.chain.contracts import PAGE_LIMIT, BoundContract
from zgserve.chain.tx import ContractCall, Receipt
from zgserve.chain.types import (
    Account,
    Service,
    ServiceParams,
    SettlementPreview,
    SettlementResult,
    SettlementStatus,
    TEESettlementData,
)

# Settlement batches hold 1..50 entries; more gives TooManySettlements.
MAX_SETTLEMENTS_PER_CALL = 50
# getBatchAccountsByUsers accepts at most this many users per call.
MAX_BATCH_USERS = 500


class InferenceServing(BoundContract):
    """Accounts, services, token revocation and TEE settlement.

    Who may send what: a provider registers its service and settles; a user acknowledges
    signers and revokes tokens; the owner acknowledges TEE signers. The contract enforces it.
    """

    # -- reads ------------------------------------------------------------------------------

    async def get_account(self, user: str, provider: str) -> Account:
        """The sub-account; :class:`~zgserve.chain.errors.AccountNotExists` if there is none."""
        (raw,) = await self.read("getAccount", user, provider)
        return Account.from_abi(raw)

    async def account_exists(self, user: str, provider: str) -> bool:
        (exists,) = await self.read("accountExists", user, provider)
        return bool(exists)

    async def get_accounts_by_provider(self, provider: str) -> list[Account]:
        """Every sub-account of ``provider``, all pages."""
        accounts: list[Account] = []
        offset = 0
        while True:
            page, total = await self.read("getAccountsByProvider", provider, offset, PAGE_LIMIT)
            accounts.extend(Account.from_abi(a) for a in page)
            offset += PAGE_LIMIT
            if offset >= total or not page:
                return accounts

    async def get_batch_accounts_by_users(self, users: Sequence[str]) -> list[Account]:
        """Sub-accounts of ``users`` with the bound wallet as provider, in order.

        Missing accounts come back zeroed (``Account.exists`` is False). Chunked by 500.
        """
        accounts: list[Account] = []
        for start in range(0, len(users), MAX_BATCH_USERS):
            (page,) = await self.read("getBatchAccountsByUsers", list(users[start : start + MAX_BATCH_USERS]))
            accounts.extend(Account.from_abi(a) for a in page)
        return accounts

    async def get_service(self, provider: str) -> Service:
        """The provider's service; :class:`~zgserve.chain.errors.ServiceNotExist` if none."""
        (raw,) = await self.read("getService", provider)
        return Service.from_abi(raw)

    async def service_exists(self, provider: str) -> bool:
        (exists,) = await self.read("serviceExists", provider)
        return bool(exists)

    async def get_all_services(self) -> list[Service]:
        """Every registered service, all pages."""
        services: list[Service] = []
        offset = 0
        while True:
            page, total = await self.read("getAllServices", offset, PAGE_LIMIT)
            services.extend(Service.from_abi(s) for s in page)
            offset += PAGE_LIMIT
            if offset >= total or not page:
                return services

    async def lock_time(self) -> int:
        """Seconds a refund stays locked (the provider's window to settle before it)."""
        (value,) = await self.read("lockTime")
        return int(value)

    async def ledger_address(self) -> str:
        (value,) = await self.read("ledgerAddress")
        return str(value)

    async def is_token_revoked(self, user: str, provider: str, token_id: int) -> bool:
        (revoked,) = await self.read("isTokenRevoked", user, provider, token_id)
        return bool(revoked)

    async def get_pending_refund(self, user: str, provider: str) -> int:
        (amount,) = await self.read("getPendingRefund", user, provider)
        return int(amount)

    # -- provider ---------------------------------------------------------------------------

    async def add_or_update_service(self, params: ServiceParams, stake: int = 0) -> Receipt:
        """Register (``stake`` ≥ 100 0G) or update (``stake`` must be 0) the sender's service.

        Changing type, model, verifiability, signer or additional info resets the owner's
        acknowledgement of the TEE signer; changing only prices or URL keeps it.
        """
        return await self.send("addOrUpdateService", params.to_abi(), value=stake)

    async def remove_service(self) -> Receipt:
        """Delete the sender's service; the whole stake is returned."""
        return await self.send("removeService")

    def settle_call(self, settlements: Sequence[TEESettlementData]) -> ContractCall:
        """The ``settleFeesWithTEE`` payload, for signing and persisting before broadcast."""
        return self.call_data("settleFeesWithTEE", [s.to_abi() for s in settlements])

    async def settle_fees_with_tee(
        self, settlements: Sequence[TEESettlementData]
    ) -> tuple[Receipt, list[SettlementResult]]:
        """Settle a batch (1..50) as the provider; results come from ``TEESettlementResult``."""
        receipt = await self.sender.transact(self.settle_call(settlements))
        return receipt, self.settlement_results(receipt)

    def settlement_results(self, receipt: Receipt) -> list[SettlementResult]:
        """Per-entry outcomes of a mined settlement, in batch order."""
        return [
            SettlementResult(
                user=e.args["user"],
                status=SettlementStatus(e.args["status"]),
                unsettled=int(e.args["unsettledAmount"]),
            )
            for e in self.events_in(receipt, "TEESettlementResult")
        ]

    async def preview_settlement_results(self, settlements: Sequence[TEESettlementData]) -> SettlementPreview:
        """What settling would do now, per entry, as the bound provider (no state change)."""
        raw = await self.read("previewSettlementResults", [s.to_abi() for s in settlements])
        return SettlementPreview.from_abi(raw)

    async def simulate_settlement(self, settlements: Sequence[TEESettlementData]) -> list[SettlementStatus]:
        """``settleFeesWithTEE`` through eth_call: exact statuses, duplicates in a batch included."""
        (statuses,) = await self.read("settleFeesWithTEE", [s.to_abi() for s in settlements])
        return [SettlementStatus(s) for s in statuses]

    # -- owner ------------------------------------------------------------------------------

    async def acknowledge_tee_signer_by_owner(self, provider: str) -> Receipt:
        return await self.send("acknowledgeTEESignerByOwner", provider)

    async def revoke_tee_signer_acknowledgement(self, provider: str) -> Receipt:
        return await self.send("revokeTEESignerAcknowledgement", provider)

    async def update_lock_time(self, seconds: int) -> Receipt:
        return await self.send("updateLockTime", seconds)

    # -- user -------------------------------------------------------------------------------

    async def acknowledge_tee_signer(self, provider: str, acknowledged: bool = True) -> Receipt:
        """Set the sender's ``Account.acknowledged`` (false needs a zero balance)."""
        return await self.send("acknowledgeTEESigner", provider, acknowledged)

    async def revoke_token(self, provider: str, token_id: int) -> Receipt:
        return await self.send("revokeToken", provider, token_id)

    async def revoke_tokens(self, provider: str, token_ids: Sequence[int]) -> Receipt:
        return await self.send("revokeTokens", provider, list(token_ids))

    async def revoke_all_tokens(self, provider: str) -> Receipt:
        """Bump ``generation`` (invalidating every token, ephemeral ones included)."""
        return await self.send("revokeAllTokens", provider)
