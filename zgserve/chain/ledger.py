"""Typed wrapper of the official ``LedgerManager`` contract (spec §1.4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zgserve.chain.abi import ContractAbi
from zgserve.chain.config import INFERENCE_SERVICE_NAME
from zgserve.chain.contracts import BoundContract
from zgserve.chain.tx import Receipt
from zgserve.chain.types import Ledger, ServiceInfo

if TYPE_CHECKING:
    from zgserve.chain.client import ChainClient
    from zgserve.chain.wallet import Wallet

MIN_LEDGER_BALANCE = 3 * 10**18  # addLedger minimum; refund must leave 0 or at least this
MIN_TRANSFER_AMOUNT = 10**18  # first transferFund to a provider (creates the sub-account)
MAX_PROVIDERS_PER_RETRIEVE = 20


class LedgerManager(BoundContract):
    """A user's main ledger and its transfers to providers' sub-accounts.

    ``service_name`` is the registry's full name (``"inference-v1.0"``), not the type.
    """

    def __init__(
        self,
        client: ChainClient,
        abi: ContractAbi,
        address: str,
        wallet: Wallet | None,
        *,
        service_name: str = INFERENCE_SERVICE_NAME,
    ) -> None:
        super().__init__(client, abi, address, wallet)
        self.service_name = service_name

    # -- reads ------------------------------------------------------------------------------

    async def get_ledger(self, user: str) -> Ledger:
        """The ledger; :class:`~zgserve.chain.errors.LedgerNotExists` if there is none."""
        (raw,) = await self.read("getLedger", user)
        return Ledger.from_abi(raw)

    async def get_ledger_providers(self, user: str, service_name: str | None = None) -> list[str]:
        (providers,) = await self.read("getLedgerProviders", user, service_name or self.service_name)
        return list(providers)

    async def get_service_info(self, service_address: str) -> ServiceInfo:
        (raw,) = await self.read("getServiceInfo", service_address)
        return ServiceInfo.from_abi(raw)

    async def get_all_active_services(self) -> list[ServiceInfo]:
        (raw,) = await self.read("getAllActiveServices")
        return [ServiceInfo.from_abi(s) for s in raw]

    # -- user -------------------------------------------------------------------------------

    async def add_ledger(self, amount: int, additional_info: str = "") -> Receipt:
        """Create the sender's ledger with ``amount`` (at least 3 0G)."""
        return await self.send("addLedger", additional_info, value=amount)

    async def deposit_fund(self, amount: int) -> Receipt:
        """Add ``amount`` to the sender's ledger (creating it if missing, then ≥ 3 0G)."""
        return await self.send("depositFund", value=amount)

    async def deposit_fund_for(self, recipient: str, amount: int) -> Receipt:
        return await self.send("depositFundFor", recipient, value=amount)

    async def refund(self, amount: int) -> Receipt:
        """Withdraw ``amount`` of available balance; reaching 0 deletes ledger and sub-accounts."""
        return await self.send("refund", amount)

    async def transfer_fund(self, provider: str, amount: int, *, service_name: str | None = None) -> Receipt:
        """Move ``amount`` to the provider's sub-account (pending refunds are cancelled first)."""
        return await self.send("transferFund", provider, service_name or self.service_name, amount)

    async def retrieve_fund(self, providers: Sequence[str], *, service_name: str | None = None) -> Receipt:
        """Per provider (≤ 20): return matured refunds, then request a refund of the rest."""
        return await self.send("retrieveFund", list(providers), service_name or self.service_name)

    async def delete_ledger(self) -> Receipt:
        return await self.send("deleteLedger")

    async def update_additional_info(self, info: str) -> Receipt:
        return await self.send("updateAdditionalInfo", info)

    # -- owner ------------------------------------------------------------------------------

    async def register_service(
        self, service_type: str, version: str, service_address: str, description: str = ""
    ) -> Receipt:
        """Add a service contract to the registry; its full name is ``f"{type}-{version}"``."""
        return await self.send("registerService", service_type, version, service_address, description)
