"""``ChainClient``: one async connection to an EVM JSON-RPC endpoint, with typed errors.

Use it as an async context manager::

    async with ChainClient(config) as chain:
        provider = chain.wallet(provider_key)
        account = await chain.inference().get_account(user, provider.address)
        await chain.inference(provider).acknowledge_tee_signer_by_owner(...)

It owns (or borrows) one aiohttp session with explicit timeouts, retries transient RPC
failures with the policy's backoff, decodes reverts into :mod:`zgserve.chain.errors`, and
awaits receipts with a timeout. Sending lives in :class:`~zgserve.chain.wallet.Wallet`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import aiohttp
from eth_abi.abi import encode
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import FilterParams, RPCEndpoint, TxParams

from zgserve.chain.abi import ContractAbi, ContractAbis, DecodedEvent, load_contract_abis
from zgserve.chain.config import NetworkConfig
from zgserve.chain.errors import (
    ChainError,
    ContractRevert,
    ReceiptTimeout,
    RpcError,
    RpcUnavailable,
    TransactionFailed,
    decode_revert,
)
from zgserve.chain.inference import InferenceServing
from zgserve.chain.ledger import LedgerManager
from zgserve.chain.tx import BlockId, ContractCall, Receipt
from zgserve.chain.wallet import NonceSequence, Wallet
from zgserve.common.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Phrases nodes use for "this exact transaction is already in the pool".
_ALREADY_KNOWN = ("already known", "already imported", "known transaction", "already exists")


def _revert_data(exc: ContractLogicError) -> bytes:
    data = exc.data
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    return b""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500
    if isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, Web3RPCError) and not isinstance(exc, TransactionNotFound):
        text = str(exc).lower()
        return "rate limit" in text or "too many requests" in text or "timeout" in text
    return False


class ChainClient:
    """Async JSON-RPC client for the two 0G contracts on any EVM chain (see module doc)."""

    def __init__(
        self,
        config: NetworkConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        abis: ContractAbis | None = None,
    ) -> None:
        self.config = config
        self.policy = config.tx_policy
        self._session = session
        self._own_session = session is None
        self._abis = abis
        self._w3: AsyncWeb3[AsyncHTTPProvider] | None = None
        # One nonce sequence per sender address, shared by every Wallet of this client.
        self._nonces: dict[str, NonceSequence] = {}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, load the ABIs and check that the node serves ``config.chain_id``."""
        timeout = aiohttp.ClientTimeout(total=self.config.rpc_timeout_s)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            # Retries are ours (policy-driven, for every method), so web3's own are switched off.
            provider = AsyncHTTPProvider(
                self.config.rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
            )
            await provider.cache_async_session(self._session)
            self._w3 = AsyncWeb3(provider)
            if self._abis is None:
                self._abis = await asyncio.to_thread(load_contract_abis, self.config.abi_dir)
            chain_id = await self._rpc("eth_chainId", lambda: self.w3.eth.chain_id)
            if chain_id != self.config.chain_id:
                raise ConfigError(
                    f"{self.config.rpc_url} serves chain id {chain_id}, "
                    f"configuration says {self.config.chain_id}"
                )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None
        self._w3 = None

    @property
    def w3(self) -> AsyncWeb3[AsyncHTTPProvider]:
        if self._w3 is None:
            raise ChainError("ChainClient is not open; use `async with ChainClient(...)`")
        return self._w3

    @property
    def abis(self) -> ContractAbis:
        if self._abis is None:
            raise ChainError("ChainClient is not open; use `async with ChainClient(...)`")
        return self._abis

    # -- contracts and wallets ---------------------------------------------------------------

    def wallet(self, private_key: str | bytes) -> Wallet:
        """A sender for ``private_key``; wallets of one address share one nonce sequence."""
        return Wallet(self, private_key)

    def nonce_sequence(self, address: str) -> NonceSequence:
        return self._nonces.setdefault(to_checksum_address(address), NonceSequence())

    def inference(self, wallet: Wallet | None = None, *, address: str | None = None) -> InferenceServing:
        """The InferenceServing proxy, sending as ``wallet`` (read-only without one)."""
        target = address or self.config.inference
        if target is None:
            raise ConfigError("no InferenceServing address configured")
        return InferenceServing(self, self.abis.inference, target, wallet)

    def ledger(self, wallet: Wallet | None = None, *, address: str | None = None) -> LedgerManager:
        """The LedgerManager proxy, sending as ``wallet`` (read-only without one)."""
        target = address or self.config.ledger
        if target is None:
            raise ConfigError("no LedgerManager address configured")
        return LedgerManager(self, self.abis.ledger, target, wallet, service_name=self.config.service_name)

    # -- plumbing ---------------------------------------------------------------------------

    async def _rpc(self, what: str, op: Callable[[], Awaitable[T]], *, tx_hash: str | None = None) -> T:
        """Run one RPC with retries on transient failures; translate errors to ChainError."""
        for attempt in range(self.policy.max_retries + 1):
            try:
                return await op()
            except ContractLogicError as exc:
                raise decode_revert(_revert_data(exc), self.abis, tx_hash=tx_hash) from exc
            except (aiohttp.ClientError, TimeoutError, ConnectionError, Web3RPCError) as exc:
                if not _is_transient(exc):
                    raise RpcError(f"{what}: {exc}") from exc
                if attempt == self.policy.max_retries:
                    raise RpcUnavailable(f"{what} failed after {attempt + 1} tries: {exc!r}") from exc
                delay = self.policy.backoff(attempt)
                logger.warning("%s failed (%r); retry %d in %.1f s", what, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """A raw JSON-RPC call (e.g. ``anvil_setBalance``); returns ``result``."""

        async def op() -> Any:
            response = await self.w3.provider.make_request(RPCEndpoint(method), list(params))
            if response.get("error"):
                raise RpcError(f"{method}: {response['error']}")
            return response.get("result")

        return await self._rpc(method, op)

    # -- reads ------------------------------------------------------------------------------

    async def call(
        self, call: ContractCall, *, sender: str | None = None, block: BlockId = "latest"
    ) -> bytes:
        """``eth_call``; a revert raises the decoded :class:`ContractRevert`."""
        tx = cast(TxParams, call.as_dict(sender))
        result = await self._rpc(call.label or "eth_call", lambda: self.w3.eth.call(tx, block))
        return bytes(result)

    async def estimate_gas(self, call: ContractCall, sender: str) -> int:
        """``eth_estimateGas`` (without buffer); a revert raises the decoded error."""
        tx = cast(TxParams, call.as_dict(sender))
        return int(await self._rpc(call.label or "eth_estimateGas", lambda: self.w3.eth.estimate_gas(tx)))

    async def gas_price(self) -> int:
        """The node's suggested gas price (the policy's buffer, floor and cap not yet applied)."""
        return int(await self._rpc("eth_gasPrice", lambda: self.w3.eth.gas_price))

    async def balance(self, address: str, block: BlockId = "latest") -> int:
        addr = to_checksum_address(address)
        return int(await self._rpc("eth_getBalance", lambda: self.w3.eth.get_balance(addr, block)))

    async def block_number(self) -> int:
        return int(await self._rpc("eth_blockNumber", lambda: self.w3.eth.block_number))

    async def block_timestamp(self, block: BlockId = "latest") -> int:
        """The timestamp of ``block`` (the chain's clock, which anvil lets tests move)."""
        data = await self._rpc("eth_getBlockByNumber", lambda: self.w3.eth.get_block(block))
        return int(data["timestamp"])

    async def pending_nonce(self, address: str) -> int:
        """The next nonce of ``address`` counting pending transactions."""
        addr = to_checksum_address(address)
        return int(
            await self._rpc(
                "eth_getTransactionCount", lambda: self.w3.eth.get_transaction_count(addr, "pending")
            )
        )

    # -- transactions -----------------------------------------------------------------------

    async def send_raw(self, raw: bytes) -> str:
        """Broadcast a signed transaction; returns its hash. Re-sending a known one is a no-op."""
        tx_hash = "0x" + keccak(raw).hex()
        try:
            await self._rpc("eth_sendRawTransaction", lambda: self.w3.eth.send_raw_transaction(raw))
        except RpcError as exc:
            # A re-send (after a lost response, or a restart) finds our own transaction in the
            # pool ("already known") or already mined (then the node says "nonce too low").
            if any(p in str(exc).lower() for p in _ALREADY_KNOWN):
                return tx_hash
            if await self.get_transaction(tx_hash) is None:
                raise
        return tx_hash

    async def get_transaction(self, tx_hash: str) -> dict[str, Any] | None:
        """The transaction, or None if the node does not know it."""
        try:
            tx = await self._rpc(
                "eth_getTransactionByHash", lambda: self.w3.eth.get_transaction(HexStr(tx_hash))
            )
        except RpcError as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return None
            raise
        return dict(tx) if tx is not None else None

    async def get_receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt, or None while the transaction is unknown or not yet mined."""
        try:
            r = await self._rpc(
                "eth_getTransactionReceipt", lambda: self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            )
        except RpcError as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return None
            raise
        return Receipt.from_rpc(r) if r is not None else None

    async def any_receipt(self, tx_hashes: Sequence[str]) -> Receipt | None:
        """The receipt of the first of ``tx_hashes`` that is mined, or None.

        For the candidates of one sender nonce (a transaction and its replacements),
        at most one can ever be mined.
        """
        for tx_hash in tx_hashes:
            receipt = await self.get_receipt(tx_hash)
            if receipt is not None:
                return receipt
        return None

    async def wait_receipt(
        self,
        tx_hash: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the timeout names the tx in ReceiptTimeout
        *,
        check: bool = True,
    ) -> Receipt:
        """Poll for the receipt; raise :class:`ReceiptTimeout`, or the revert reason when ``check``."""
        receipt = await self.wait_any_receipt([tx_hash], timeout)
        if check and receipt.status != 1:
            await self._raise_failure(receipt)
        return receipt

    async def wait_any_receipt(
        self,
        tx_hashes: Sequence[str],
        timeout: float | None = None,  # noqa: ASYNC109 - the timeout names the tx in ReceiptTimeout
    ) -> Receipt:
        """Poll until one of ``tx_hashes`` is mined and return its receipt (reverted or not).

        Raises :class:`ReceiptTimeout` (naming the last hash) when none is mined in time.
        """
        if not tx_hashes:
            raise ValueError("no transaction to wait for")
        limit = timeout if timeout is not None else self.policy.receipt_timeout_s
        deadline = asyncio.get_running_loop().time() + limit
        delay = 0.02  # local chains mine at once; back off toward receipt_poll_s for real ones
        while True:
            receipt = await self.any_receipt(tx_hashes)
            if receipt is not None:
                return receipt
            if asyncio.get_running_loop().time() + delay > deadline:
                raise ReceiptTimeout(tx_hashes[-1], limit)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.policy.receipt_poll_s)

    async def _raise_failure(self, receipt: Receipt) -> None:
        """Replay a failed transaction with eth_call just before its block to get the reason."""
        tx = await self.get_transaction(receipt.tx_hash)
        if tx is None:
            raise TransactionFailed(f"{receipt.tx_hash} reverted", tx_hash=receipt.tx_hash)
        to = tx.get("to")
        call = ContractCall(to=to, data=bytes(tx.get("input", b"")), value=int(tx.get("value", 0)))
        replay = cast(TxParams, call.as_dict(to_checksum_address(tx["from"])) | {"gas": int(tx["gas"])})
        block = max(receipt.block_number - 1, 0)
        try:
            await self._rpc("replay", lambda: self.w3.eth.call(replay, block), tx_hash=receipt.tx_hash)
        except ContractRevert as exc:
            if exc.data:  # a decoded reason; reverts without data (out of gas) are reported below
                raise
        except ChainError as exc:  # the replay itself failed; report the bare failure
            logger.debug("replay of %s failed: %s", receipt.tx_hash, exc)
        raise TransactionFailed(
            f"{receipt.tx_hash} reverted on chain (gas used {receipt.gas_used} of {int(tx['gas'])})",
            tx_hash=receipt.tx_hash,
        )

    # -- events -----------------------------------------------------------------------------

    async def get_events(
        self,
        abi: ContractAbi,
        address: str,
        event: str,
        from_block: BlockId,
        to_block: BlockId = "latest",
        **indexed: Any,
    ) -> list[DecodedEvent]:
        """Decoded logs of ``event`` emitted by ``address``; ``indexed`` filters indexed args."""
        spec = abi.events[event]
        topics: list[Any] = [spec.topic0]
        for name, abi_type, is_indexed in zip(spec.names, spec.types, spec.indexed, strict=True):
            if is_indexed:
                value = indexed.pop(name, None)
                topics.append(None if value is None else encode([abi_type], [value]))
        if indexed:
            raise ValueError(f"{event} has no indexed argument(s) {sorted(indexed)}")
        while topics and topics[-1] is None:
            topics.pop()
        params = {
            "address": to_checksum_address(address),
            "fromBlock": from_block,
            "toBlock": to_block,
            "topics": topics,
        }
        logs = await self._rpc("eth_getLogs", lambda: self.w3.eth.get_logs(cast(FilterParams, params)))
        decoded = (abi.decode_log(log) for log in logs)
        return [d for d in decoded if d is not None]
