"""``Wallet``: signs and sends transactions for one key, one nonce sequence per sender.

Concurrent sends from one address are safe: the nonce is taken, the transaction signed and
broadcast under the sequence's lock, and the next nonce is tracked locally. Whenever the
node refuses a transaction the local value is dropped and re-read from the ``pending``
transaction count, so one bad send never leaves a gap for the following ones. Gas is
estimated (and a revert raised, decoded) before the lock is taken, so waiting for receipts
and estimating never serialise.

For crash-safe flows the steps are separate: :meth:`Wallet.sign_transaction` reserves a nonce
and returns the raw signed bytes to persist; ``ChainClient.send_raw`` broadcasts them (again
after a restart: re-sending a known transaction is harmless); ``ChainClient.wait_receipt``
awaits the outcome. Call :meth:`Wallet.release_nonce` if a signed transaction is never sent.
:meth:`Wallet.reprice` re-signs such a transaction at a higher gas price (same nonce, gas,
target, value and data) to replace it while it is stuck in the pool.
Broadcast signed transactions promptly: a resync after a refused send reads the node's
count, which does not know about nonces reserved but not yet broadcast.

The local sequence assumes this process is the key's only sender. Processes that share a
key must take turns (the broker's replicas: only the settlement lease holder sends) and call
:meth:`Wallet.reset_nonce` when their turn starts, since the others have moved the count.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from eth_account import Account as EthAccount
from eth_utils.address import to_checksum_address

from zgserve.chain.errors import ChainError, RpcError
from zgserve.chain.tx import ContractCall, Receipt, SignedTx, decode_legacy

if TYPE_CHECKING:
    from zgserve.chain.client import ChainClient

_NONCE_ERRORS = ("nonce too low", "nonce too high", "invalid nonce", "nonce has already been used")


class NonceSequence:
    """The next nonce of one sender and the lock that guards it (``None``: read from the node)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.next: int | None = None


class Wallet:
    """Sends transactions as one account through a :class:`ChainClient`."""

    def __init__(self, client: ChainClient, private_key: str | bytes) -> None:
        self._client = client
        self._account = EthAccount.from_key(private_key)
        self.address: str = to_checksum_address(self._account.address)
        self._seq = client.nonce_sequence(self.address)

    def __repr__(self) -> str:  # never show the key
        return f"Wallet({self.address})"

    async def _prepare(self, call: ContractCall, gas: int | None) -> tuple[int, int]:
        policy = self._client.policy
        if gas is None:
            gas = policy.gas_limit(await self._client.estimate_gas(call, self.address))
        price = policy.clamp_gas_price(await self._client.gas_price())
        return gas, price

    async def _take_nonce(self) -> int:
        """The next nonce; the caller holds the sequence lock."""
        if self._seq.next is None:
            self._seq.next = await self._client.pending_nonce(self.address)
        return self._seq.next

    def _sign(self, call: ContractCall, nonce: int, gas: int, gas_price: int) -> SignedTx:
        # Legacy (type 0) transactions: accepted by every EVM chain including 0G's.
        tx: dict[str, Any] = {
            "nonce": nonce,
            "gas": gas,
            "gasPrice": gas_price,
            "chainId": self._client.config.chain_id,
            "data": call.data,
            "value": call.value,
        }
        if call.to is not None:
            tx["to"] = to_checksum_address(call.to)
        signed = self._account.sign_transaction(tx)
        return SignedTx(
            raw=bytes(signed.raw_transaction),
            tx_hash="0x" + bytes(signed.hash).hex(),
            nonce=nonce,
            sender=self.address,
            gas=gas,
            gas_price=gas_price,
        )

    async def sign_transaction(self, call: ContractCall, *, gas: int | None = None) -> SignedTx:
        """Estimate, price and sign ``call`` with the next nonce, without broadcasting it.

        The nonce is reserved: broadcast the result with ``ChainClient.send_raw`` (or call
        :meth:`release_nonce` to give it up), otherwise later transactions wait behind the gap.
        """
        gas, price = await self._prepare(call, gas)
        async with self._seq.lock:
            signed = self._sign(call, await self._take_nonce(), gas, price)
            self._seq.next = signed.nonce + 1
        return signed

    async def send(self, call: ContractCall, *, gas: int | None = None) -> SignedTx:
        """Estimate, sign and broadcast ``call``; returns once the node accepted it."""
        gas, price = await self._prepare(call, gas)
        async with self._seq.lock:
            for attempt in range(2):
                signed = self._sign(call, await self._take_nonce(), gas, price)
                try:
                    await self._client.send_raw(signed.raw)
                except ChainError as exc:
                    self._seq.next = None  # re-read from the node next time
                    # Someone else used this key (or the node restarted): retry once, fresh.
                    if attempt == 0 and isinstance(exc, RpcError) and _is_nonce_error(exc):
                        continue
                    raise
                self._seq.next = signed.nonce + 1
                return signed
        raise AssertionError("unreachable")

    async def transact(
        self,
        call: ContractCall,
        *,
        gas: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - passed on to wait_receipt
    ) -> Receipt:
        """Send ``call`` and wait for its receipt; a revert raises the decoded error."""
        signed = await self.send(call, gas=gas)
        return await self._client.wait_receipt(signed.tx_hash, timeout)

    def reprice(self, raw: bytes, gas_price: int) -> SignedTx:
        """Re-sign ``raw`` (a transaction of this wallet) at ``gas_price``, everything else equal.

        The result replaces ``raw`` in a node's pool once its price is high enough (nodes ask
        for a 10 % or larger increase); at most one of the two can ever be mined. The nonce
        sequence is not touched: the nonce is the one ``raw`` already holds.
        """
        tx = decode_legacy(raw)
        if EthAccount.recover_transaction(raw) != self.address:
            raise ValueError(f"transaction was not signed by {self.address}")
        if tx.chain_id != self._client.config.chain_id:
            raise ValueError(f"transaction is for chain {tx.chain_id}, not {self._client.config.chain_id}")
        return self._sign(tx.call, tx.nonce, tx.gas, gas_price)

    async def release_nonce(self, signed: SignedTx) -> None:
        """Give up ``signed``, which was never broadcast, without leaving a gap behind it.

        If no later nonce was handed out, the next transaction takes this one. Otherwise the
        later ones (signed by a concurrent caller) would wait behind the gap for ever: the gap
        is filled with a zero-value transfer to ourselves at the same price. The node refuses
        the filler if the nonce was used meanwhile, which is as good.
        """
        async with self._seq.lock:
            if self._seq.next == signed.nonce + 1:
                self._seq.next = signed.nonce
                return
        filler = self._sign(ContractCall(to=self.address, data=b""), signed.nonce, 21_000, signed.gas_price)
        try:
            await self._client.send_raw(filler.raw)
        except ChainError:
            await self.reset_nonce()  # the nonce is used: re-read the sequence from the node

    async def reset_nonce(self) -> None:
        """Forget the locally tracked nonce; the next send reads it from the node."""
        async with self._seq.lock:
            self._seq.next = None

    async def balance(self) -> int:
        return await self._client.balance(self.address)


def _is_nonce_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(p in text for p in _NONCE_ERRORS)
