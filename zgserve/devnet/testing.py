"""Helpers for tests that run against a devnet: fresh providers with acknowledged services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from eth_account import Account as EthAccount

from zgserve.chain.types import ServiceParams
from zgserve.chain.wallet import Wallet
from zgserve.common.money import OG
from zgserve.devnet.deployment import DevAccount
from zgserve.devnet.network import Devnet

PROVIDER_STAKE = 100 * OG  # the contract's MIN_PROVIDER_STAKE


@dataclass(frozen=True)
class RegisteredProvider:
    """A provider with a service on chain whose TEE signer the owner has acknowledged."""

    account: DevAccount
    wallet: Wallet
    tee_key: str
    tee_address: str
    params: ServiceParams

    @property
    def address(self) -> str:
        return self.account.address


NewAccount = Callable[..., Awaitable[DevAccount]]
RegisterProvider = Callable[..., Awaitable[RegisteredProvider]]


def service_params(tee_address: str, **overrides: Any) -> ServiceParams:
    """Plausible service parameters; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "service_type": "chatbot",
        "url": "http://127.0.0.1:1",
        "model": "SmolLM2-135M-Instruct",
        "verifiability": "TeeML",
        "input_price": 1_000_000_000,
        "output_price": 2_000_000_000,
        "additional_info": "{}",
        "tee_signer_address": tee_address,
    }
    return ServiceParams(**(fields | overrides))


def new_tee_key() -> tuple[str, str]:
    """A fresh TEE signer key and its address."""
    tee = EthAccount.create()
    return "0x" + bytes(tee.key).hex(), str(tee.address)


async def register_provider_on(
    devnet: Devnet, *, acknowledge: bool = True, **overrides: Any
) -> RegisteredProvider:
    """Register a fresh provider (100 0G stake) and, by default, have the owner acknowledge it."""
    account = await devnet.new_account()
    tee_key, tee_address = new_tee_key()
    params = service_params(tee_address, **overrides)
    wallet = devnet.chain.wallet(account.private_key)
    await devnet.chain.inference(wallet).add_or_update_service(params, stake=PROVIDER_STAKE)
    if acknowledge:
        await devnet.chain.inference(devnet.owner_wallet()).acknowledge_tee_signer_by_owner(account.address)
    return RegisteredProvider(account, wallet, tee_key, tee_address, params)
