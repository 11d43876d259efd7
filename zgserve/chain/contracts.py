"""The base of the typed contract wrappers: calls, sends and events for one deployed contract."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eth_utils.address import to_checksum_address

from zgserve.chain.abi import ContractAbi, DecodedEvent
from zgserve.chain.errors import ChainError
from zgserve.chain.tx import BlockId, ContractCall, Receipt

if TYPE_CHECKING:
    from zgserve.chain.client import ChainClient
    from zgserve.chain.wallet import Wallet

# Paged getters accept at most this many entries per call (0 also means 50).
PAGE_LIMIT = 50


class BoundContract:
    """One contract at ``address``, read through ``client`` and sent as ``wallet``.

    Views are called with ``from = wallet.address`` when a wallet is bound, because some
    views (``getBatchAccountsByUsers``, ``previewSettlementResults``) depend on ``msg.sender``.
    """

    def __init__(self, client: ChainClient, abi: ContractAbi, address: str, wallet: Wallet | None) -> None:
        self.client = client
        self.abi = abi
        self.address: str = to_checksum_address(address)
        self.wallet = wallet

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address}, wallet={self.wallet!r})"

    @property
    def sender(self) -> Wallet:
        if self.wallet is None:
            raise ChainError(f"{self.abi.name} is bound read-only; pass a wallet to send transactions")
        return self.wallet

    def call_data(self, function: str, *args: Any, value: int = 0) -> ContractCall:
        """The payload of ``function(*args)``, for signing elsewhere (``Wallet.sign_transaction``)."""
        data = self.abi.encode_call(function, args)
        return ContractCall(to=self.address, data=data, value=value, label=f"{self.abi.name}.{function}")

    async def read(self, function: str, *args: Any, block: BlockId = "latest") -> tuple[Any, ...]:
        """Call a view (or simulate a write) and return its decoded outputs."""
        sender = self.wallet.address if self.wallet is not None else None
        raw = await self.client.call(self.call_data(function, *args), sender=sender, block=block)
        return self.abi.decode_output(function, raw)

    async def send(self, function: str, *args: Any, value: int = 0) -> Receipt:
        """Send ``function(*args)`` as the bound wallet and wait for the receipt."""
        return await self.sender.transact(self.call_data(function, *args, value=value))

    def events_in(self, receipt: Receipt, name: str | None = None) -> list[DecodedEvent]:
        """Events this contract emitted in ``receipt`` (all, or only ``name``)."""
        found = []
        for log in receipt.logs:
            if to_checksum_address(log["address"]) != self.address:
                continue
            event = self.abi.decode_log(log)
            if event is not None and (name is None or event.name == name):
                found.append(event)
        return found

    async def get_events(
        self, name: str, from_block: BlockId = 0, to_block: BlockId = "latest", **indexed: Any
    ) -> list[DecodedEvent]:
        """Decoded ``name`` events in a block range; keyword arguments filter indexed fields.

        Public RPCs limit the range of one ``eth_getLogs``; page through long ranges.
        """
        return await self.client.get_events(self.abi, self.address, name, from_block, to_block, **indexed)

    async def owner(self) -> str:
        (owner,) = await self.read("owner")
        return str(owner)
