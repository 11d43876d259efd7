"""A whole local 0G network in one call: anvil, the official contracts, funded wallets.

::

    async with start_devnet(users=4) as devnet:
        devnet.deployment          # what ``zgserve devnet`` writes to deployment.json
        devnet.chain               # a ChainClient for it
        await devnet.increase_time(3600)

Accounts are anvil's dev accounts: index 0 owns and deployed the contracts, index 1 is the
provider, 2.. are the users. :meth:`Devnet.new_account` makes extra funded random accounts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from eth_account import Account as EthAccount

from zgserve.chain.abi import ContractAbi, ContractAbis
from zgserve.chain.client import ChainClient
from zgserve.chain.config import NetworkConfig, TxPolicy
from zgserve.chain.wallet import Wallet
from zgserve.common.money import OG
from zgserve.devnet.anvil import ANVIL_CHAIN_ID, Anvil
from zgserve.devnet.artifacts import devnet_artifacts
from zgserve.devnet.deploy import MIN_LOCK_TIME, deploy_contracts
from zgserve.devnet.deployment import Deployment, DevAccount

DEFAULT_FUNDING = 10_000 * OG
# Owner and provider come before the users among anvil's dev accounts.
FIRST_USER_INDEX = 2

Progress = Callable[[str, float], None]


@dataclass
class Devnet:
    """A running local network; valid inside ``start_devnet``'s ``async with``."""

    anvil: Anvil
    chain: ChainClient
    deployment: Deployment

    @property
    def rpc_url(self) -> str:
        return self.deployment.rpc_url

    def owner_wallet(self) -> Wallet:
        """The contracts' owner (anvil account 0), for owner-only calls."""
        assert self.deployment.owner is not None
        return self.chain.wallet(self.deployment.owner.private_key)

    def network_config(self, tx_policy: TxPolicy | None = None) -> NetworkConfig:
        return NetworkConfig.from_deployment(self.deployment, tx_policy=tx_policy)

    async def set_balance(self, address: str, amount: int) -> None:
        """Set a native balance directly (``anvil_setBalance``)."""
        await self.chain.request("anvil_setBalance", [address, hex(amount)])

    async def new_account(self, balance: int = DEFAULT_FUNDING) -> DevAccount:
        """A fresh random key, funded; tests use one each so they never share state."""
        key = "0x" + bytes(EthAccount.create().key).hex()
        account = DevAccount(address=EthAccount.from_key(key).address, private_key=key)
        await self.set_balance(account.address, balance)
        return account

    async def timestamp(self) -> int:
        """The latest block's timestamp: the clock the contracts see."""
        return await self.chain.block_timestamp()

    async def increase_time(self, seconds: int) -> int:
        """Move the chain clock forward and mine a block; returns the new block timestamp.

        This moves time for every user of this devnet; tests that rely on it should
        use a devnet of their own.
        """
        await self.chain.request("evm_increaseTime", [seconds])
        await self.mine()
        return await self.timestamp()

    async def mine(self, blocks: int = 1) -> None:
        await self.chain.request("anvil_mine", [hex(blocks)])

    async def snapshot(self) -> str:
        """Save the chain state (``evm_snapshot``); see :meth:`revert`."""
        return str(await self.chain.request("evm_snapshot"))

    async def revert(self, snapshot_id: str) -> bool:
        """Return to a snapshot. Wallets that sent since then must ``reset_nonce()``."""
        return bool(await self.chain.request("evm_revert", [snapshot_id]))


@asynccontextmanager
async def start_devnet(
    *,
    users: int = 4,
    lock_time: int = MIN_LOCK_TIME,
    port: int | None = None,
    funding: int = DEFAULT_FUNDING,
    progress: Progress | None = None,
) -> AsyncIterator[Devnet]:
    """Start anvil, deploy the contracts, fund provider and ``users`` wallets; stop on exit."""

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        if progress is not None:
            progress(name, now - since)
        return now

    t = time.monotonic()
    # Reading/compiling artifacts (Node, first time only) overlaps anvil's start.
    artifacts_task = asyncio.create_task(asyncio.to_thread(devnet_artifacts))
    try:
        anvil = Anvil(port=port, accounts=max(10, FIRST_USER_INDEX + users))
        await anvil.start()
    except BaseException:
        artifacts_task.cancel()
        raise
    try:
        t = step(f"anvil started at {anvil.rpc_url}", t)
        artifacts = await artifacts_task
        abis = ContractAbis(
            ledger=ContractAbi("LedgerManager", artifacts.ledger.abi),
            inference=ContractAbi("InferenceServing", artifacts.inference.abi),
        )
        t = step("contract artifacts loaded", t)
        owner, provider = anvil.accounts[0], anvil.accounts[1]
        user_accounts = tuple(anvil.accounts[FIRST_USER_INDEX : FIRST_USER_INDEX + users])
        bootstrap = NetworkConfig(rpc_url=anvil.rpc_url, chain_id=ANVIL_CHAIN_ID)
        async with ChainClient(bootstrap, abis=abis) as boot:
            contracts = await deploy_contracts(
                boot, boot.wallet(owner.private_key), artifacts, lock_time=lock_time
            )
            t = step("contracts deployed behind proxies, service registered", t)
            await asyncio.gather(
                *(
                    boot.request("anvil_setBalance", [a.address, hex(funding)])
                    for a in (provider, *user_accounts)
                )
            )
        deployment = Deployment(
            chain_id=ANVIL_CHAIN_ID,
            rpc_url=anvil.rpc_url,
            contracts=contracts,
            lock_time=lock_time,
            owner=owner,
            provider=provider,
            users=user_accounts,
        )
        async with ChainClient(NetworkConfig.from_deployment(deployment), abis=abis) as chain:
            step(f"provider and {users} users funded", t)
            yield Devnet(anvil=anvil, chain=chain, deployment=deployment)
    finally:
        await anvil.stop()
