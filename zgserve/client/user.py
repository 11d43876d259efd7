"""``UserClient``: everything a user of the 0G Compute Network does, in Python.

Ledger and provider accounts go through the official contracts; requests go to the
provider's broker with the SDK's ``app-sk-`` tokens; answers are checked against the
bytes exchanged and the service's on-chain signer::

    async with await UserClient.connect(network, private_key) as user:
        await user.deposit(money.og(10))
        provider = (await user.list_providers())[0].provider
        await user.acknowledge(provider)
        recorder = ExchangeRecorder()
        client = await user.async_openai(provider, recorder=recorder)
        answer = await client.chat.completions.create(model=..., messages=[...])
        check = await user.verify_response(provider, recorder.last)
        await user.request_refund([provider])
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

import aiohttp
from openai import AsyncOpenAI, OpenAI

from zgserve.chain import (
    AccountNotExists,
    ChainClient,
    LedgerNotExists,
    NetworkConfig,
    Receipt,
)
from zgserve.chain.ledger import MAX_PROVIDERS_PER_RETRIEVE, MIN_TRANSFER_AMOUNT
from zgserve.chain.types import Account, Ledger, Service
from zgserve.client import tokens
from zgserve.client.openai_client import Exchange, ExchangeRecorder, async_openai_client, openai_client
from zgserve.client.provider import SDK_SERVICE_TYPES, ProviderHttp, SignatureRecord, response_signer
from zgserve.client.responses import check_exchange
from zgserve.client.tokens import EPHEMERAL_TOKEN_ID, EphemeralTokenCache, SignedToken
from zgserve.client.verify import Verification
from zgserve.common.errors import BadRequest, NotFound, UpstreamError, UpstreamUnavailable

if TYPE_CHECKING:
    from zgserve.client.settlements import SettlementAudit

# What the SDK keeps in a provider account beyond the unsettled fee before each request.
SDK_RESERVE = 2 * MIN_TRANSFER_AMOUNT
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class UserClient:
    """A user's key on one network: ledger, provider accounts, tokens, chats, checks.

    Build it with :meth:`connect` (opens and owns a :class:`ChainClient`) or around an
    open ``ChainClient`` (borrowed). Use it as an async context manager, or call
    :meth:`aclose`.
    """

    def __init__(self, chain: ChainClient, private_key: str | bytes, *, own_chain: bool = False) -> None:
        self.chain = chain
        self._key = private_key
        self._own_chain = own_chain
        self.wallet = chain.wallet(private_key)
        self.address: str = self.wallet.address
        self.ledger = chain.ledger(self.wallet)
        self.inference = chain.inference(self.wallet)
        self._sessions = EphemeralTokenCache()
        self._services: dict[str, Service] = {}
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, network: NetworkConfig, private_key: str | bytes) -> UserClient:
        """Open a chain connection for ``network`` and build a client that owns it."""
        chain = ChainClient(network)
        await chain.open()
        return cls(chain, private_key, own_chain=True)

    def __repr__(self) -> str:
        return f"UserClient({self.address} on {self.chain.config.chain_name})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._own_chain:
            await self.chain.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=_HTTP_TIMEOUT)
        return self._http

    # -- ledger -----------------------------------------------------------------------------

    async def wallet_balance(self) -> int:
        """The key's native balance, in neuron."""
        return await self.wallet.balance()

    async def get_ledger(self) -> Ledger | None:
        """The user's ledger, or None if there is none."""
        try:
            return await self.ledger.get_ledger(self.address)
        except LedgerNotExists:
            return None

    async def create_ledger(self, amount: int, additional_info: str = "") -> Receipt:
        """``addLedger`` with ``amount`` neuron (at least 3 0G), as the SDK's ``addLedger``."""
        return await self.ledger.add_ledger(amount, additional_info)

    async def deposit(self, amount: int) -> Receipt:
        """Add ``amount`` to the ledger; creates it when missing (then at least 3 0G)."""
        return await self.ledger.deposit_fund(amount)

    async def withdraw(self, amount: int) -> Receipt:
        """Move ``amount`` of the ledger's available balance back to the wallet (``refund``).

        The rest must be 0 or at least 3 0G; reaching 0 deletes the ledger and its accounts.
        """
        return await self.ledger.refund(amount)

    async def transfer(self, provider: str, amount: int) -> Receipt:
        """Move ``amount`` from the ledger to the provider's account (≥ 1 0G for a new account).

        Pending refunds of that account are cancelled first; only the rest leaves the ledger.
        """
        return await self.ledger.transfer_fund(provider, amount)

    async def ledger_providers(self) -> list[str]:
        """Providers the ledger has an account with."""
        return await self.ledger.get_ledger_providers(self.address)

    async def request_refund(self, providers: Sequence[str] | None = None) -> list[Receipt]:
        """``retrieveFund``: return matured refunds to the ledger, then request refunds of the rest.

        Requested refunds become available after the contract's ``lockTime``; call this
        again then to collect them. Without ``providers`` every account is covered.
        """
        targets = list(providers) if providers is not None else await self.ledger_providers()
        receipts = []
        for start in range(0, len(targets), MAX_PROVIDERS_PER_RETRIEVE):
            batch = targets[start : start + MAX_PROVIDERS_PER_RETRIEVE]
            receipts.append(await self.ledger.retrieve_fund(batch))
        return receipts

    # -- providers and accounts -------------------------------------------------------------

    async def get_account(self, provider: str) -> Account | None:
        """The user's account with ``provider``, or None if there is none."""
        try:
            return await self.inference.get_account(self.address, provider)
        except AccountNotExists:
            return None

    async def accounts(self) -> list[Account]:
        """Every account of this user (with any provider)."""
        found = await asyncio.gather(*(self.get_account(p) for p in await self.ledger_providers()))
        return [a for a in found if a is not None]

    async def list_providers(self, *, include_unacknowledged: bool = False) -> list[Service]:
        """Services, like the SDK's ``listService``: only owner-acknowledged signers by default."""
        services = await self.inference.get_all_services()
        for service in services:
            self._services[service.provider.lower()] = service
        return [
            s
            for s in services
            if s.service_type in SDK_SERVICE_TYPES and (include_unacknowledged or s.tee_signer_acknowledged)
        ]

    async def get_service(self, provider: str, *, fresh: bool = False) -> Service:
        """The provider's service (cached; ``fresh`` reads the chain again)."""
        key = provider.lower()
        if fresh or key not in self._services:
            self._services[key] = await self.inference.get_service(provider)
        return self._services[key]

    async def acknowledge(self, provider: str) -> Account:
        """Acknowledge the provider's TEE signer, as the SDK's ``acknowledgeProviderSigner``.

        Without an account, transfers 1 0G (a new account is acknowledged by the contract);
        otherwise sets ``acknowledged`` if it is not set yet.
        """
        account = await self.get_account(provider)
        if account is None:
            await self.transfer(provider, MIN_TRANSFER_AMOUNT)
        elif not account.acknowledged:
            await self.inference.acknowledge_tee_signer(provider, True)
        account = await self.get_account(provider)
        assert account is not None
        return account

    async def ensure_funds(self, provider: str, *, reserve: int = SDK_RESERVE) -> int:
        """Top the account up like the SDK's ``checkAndFund``; returns the amount transferred.

        Needs ``balance - pendingRefund >= unsettledFee + reserve``; the deficit (at least
        1 0G) moves from the ledger. ``unsettledFee`` comes from the provider, 0 if unknown.
        """
        account = await self.get_account(provider)
        try:
            unsettled = await self.unsettled_fee(provider) if account is not None else 0
        except (NotFound, UpstreamError, UpstreamUnavailable):
            unsettled = 0  # the SDK, too, goes on with what it knows when the provider can't say
        required = unsettled + reserve
        available = account.available if account is not None else 0
        if available >= required:
            return 0
        amount = max(required - available, MIN_TRANSFER_AMOUNT)
        await self.transfer(provider, amount)
        return amount

    # -- tokens -----------------------------------------------------------------------------

    async def _token_state(self, provider: str) -> tuple[int, int]:
        """(generation, revokedBitmap) of the account, (0, 0) without one, as the SDK reads them."""
        account = await self.get_account(provider)
        if account is None:
            return 0, 0
        return account.generation, account.revoked_bitmap

    async def session_token(self, provider: str) -> SignedToken:
        """The ephemeral token for ``provider`` (tokenId 255, 24 h), reused while > 1 h is left."""
        cached = self._sessions.lookup(provider)
        if cached is not None:
            return cached
        generation, _ = await self._token_state(provider)
        token = tokens.ephemeral_token(self._key, provider, generation=generation)
        self._sessions.store(token)
        return token

    async def session_headers(self, provider: str) -> dict[str, str]:
        """``{"Authorization": "Bearer app-sk-..."}``, as the SDK's ``getRequestHeaders``."""
        return (await self.session_token(provider)).headers()

    async def legacy_headers(self, provider: str) -> dict[str, str]:
        """``Address`` / ``Session-Token`` / ``Session-Signature`` (the provider log endpoints)."""
        return (await self.session_token(provider)).legacy_headers()

    async def create_api_key(
        self, provider: str, *, token_id: int | None = None, expires_in_ms: int = 0
    ) -> SignedToken:
        """A persistent API key (tokenId 0-254), as the SDK's ``createApiKey``.

        Without ``token_id`` the lowest id not revoked on chain is used; ``expires_in_ms``
        0 means it never expires. ``.api_key()`` is the ``app-sk-...`` string to hand out.
        """
        generation, bitmap = await self._token_state(provider)
        return tokens.api_key_token(
            self._key,
            provider,
            generation=generation,
            revoked_bitmap=bitmap,
            token_id=token_id,
            duration_ms=expires_in_ms,
        )

    async def revoke_api_key(self, provider: str, token_id: int) -> Receipt:
        """Revoke one API key on chain (its bit in ``revokedBitmap``)."""
        if token_id == EPHEMERAL_TOKEN_ID:
            raise BadRequest("ephemeral tokens (id 255) are revoked only all at once: revoke_all_tokens")
        return await self.inference.revoke_token(provider, token_id)

    async def revoke_all_tokens(self, provider: str) -> Receipt:
        """Bump the account's ``generation``: every key and ephemeral token stops working."""
        receipt = await self.inference.revoke_all_tokens(provider)
        self._sessions.forget(provider)
        return receipt

    # -- requests ---------------------------------------------------------------------------

    async def provider_http(self, provider: str) -> ProviderHttp:
        return ProviderHttp(self._session(), await self.get_service(provider))

    async def unsettled_fee(self, provider: str) -> int:
        """What ``provider`` has recorded for this user and not settled yet, in neuron."""
        http = await self.provider_http(provider)
        return await http.unsettled_fee(self.address, await self.session_headers(provider))

    async def openai(
        self,
        provider: str,
        *,
        api_key: str | None = None,
        recorder: ExchangeRecorder | None = None,
        request_timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> OpenAI:
        """A synchronous ``openai.OpenAI`` for ``provider`` (base URL ``url + /v1/proxy``).

        Authenticates with ``api_key`` if given, else with the ephemeral session token
        (built now; valid 24 h).
        """
        service = await self.get_service(provider)
        key = api_key or (await self.session_token(provider)).api_key()
        return openai_client(
            service.url, key, recorder=recorder, timeout=request_timeout_s, max_retries=max_retries
        )

    async def async_openai(
        self,
        provider: str,
        *,
        api_key: str | None = None,
        recorder: ExchangeRecorder | None = None,
        request_timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` for ``provider``; session tokens are renewed as they age."""
        service = await self.get_service(provider)

        async def current_key() -> str:
            return (await self.session_token(provider)).api_key()

        key = api_key if api_key is not None else current_key
        return async_openai_client(
            service.url, key, recorder=recorder, timeout=request_timeout_s, max_retries=max_retries
        )

    async def fetch_signature(self, provider: str, chat_id: str, *, wait_s: float = 0.0) -> SignatureRecord:
        """The provider's signature of ``chat_id``; retried for up to ``wait_s`` while it answers 404.

        A signature is stored when the answer has ended, which can trail the last byte
        the client reads by a moment.
        """
        http = await self.provider_http(provider)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = 0.05
        while True:
            try:
                return await http.signature(chat_id)
            except NotFound:
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def audit_settlements(self, provider: str, exchanges: Iterable[Exchange] = ()) -> SettlementAudit:
        """Audit every settlement the provider made of this user's fees against ``exchanges``.

        See :func:`zgserve.client.settlements.audit_settlements`.
        """
        from zgserve.client.settlements import audit_settlements

        return await audit_settlements(self, provider, exchanges)

    async def verify_response(
        self, provider: str, exchange: Exchange, *, signature_wait_s: float = 3.0
    ) -> Verification:
        """Fetch the signature of ``exchange`` and check it against the bytes and the signer."""
        chat_id = exchange.chat_id
        if not chat_id:
            raise BadRequest("the response has no chat id (no ZG-Res-Key header and no id)")
        service = await self.get_service(provider)
        record = await self.fetch_signature(provider, chat_id, wait_s=signature_wait_s)
        return check_exchange(exchange, record, response_signer(service))


def openai_for_provider(
    network: NetworkConfig,
    private_key: str | bytes,
    provider: str,
    *,
    api_key: str | None = None,
    recorder: ExchangeRecorder | None = None,
    request_timeout_s: float = 120.0,
    max_retries: int = 2,
) -> OpenAI:
    """For code without an event loop: a ready ``openai.OpenAI`` for ``provider``.

    Reads the service from the chain and signs a session token (valid 24 h) unless
    ``api_key`` is given; the account must exist and be acknowledged (see
    :meth:`UserClient.acknowledge`). Must not be called from a running event loop.
    """

    async def build() -> OpenAI:
        async with await UserClient.connect(network, private_key) as user:
            return await user.openai(
                provider,
                api_key=api_key,
                recorder=recorder,
                request_timeout_s=request_timeout_s,
                max_retries=max_retries,
            )

    return asyncio.run(build())
