"""Which network a user talks to: an RPC URL, plus contract addresses or a deployment file.

For the public networks the addresses default to the official SDK's (0.9.0) by chain id,
so an RPC URL is enough there; the chain id is read from the RPC when not given.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from zgserve.chain.config import MAINNET_CHAIN_ID, TESTNET_CHAIN_ID, NetworkConfig
from zgserve.common.errors import ConfigError
from zgserve.devnet.deployment import Deployment

# The SDK's default proxy addresses per chain id: (LedgerManager, InferenceServing).
SDK_CONTRACTS: dict[int, tuple[str, str]] = {
    TESTNET_CHAIN_ID: (
        "0xE70830508dAc0A97e6c087c75f402f9Be669E406",
        "0xa79F4c8311FF93C06b8CfB403690cc987c93F91E",
    ),
    MAINNET_CHAIN_ID: (
        "0x2dE54c845Cd948B72D2e32e39586fe89607074E3",
        "0x47340d900bdFec2BD393c626E12ea0656F938d84",
    ),
}
PUBLIC_RPC = {
    "testnet": "https://evmrpc-testnet.0g.ai",
    "mainnet": "https://evmrpc.0g.ai",
}


async def read_chain_id(rpc_url: str, timeout_s: float = 15.0) -> int:
    """``eth_chainId`` of ``rpc_url``."""
    payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(rpc_url, json=payload) as resp,
        ):
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot read the chain id from {rpc_url}: {exc!r}") from exc
    try:
        return int(data["result"], 16)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{rpc_url} gave no chain id: {data!r}") from exc


async def resolve_network(
    *,
    rpc_url: str | None = None,
    chain_id: int | None = None,
    ledger: str | None = None,
    inference: str | None = None,
    deployment: Path | None = None,
) -> NetworkConfig:
    """A :class:`NetworkConfig` from explicit values, a deployment file, and the SDK defaults.

    Explicit values win over the deployment file; addresses missing after that are the
    SDK's defaults for the chain id (testnet, mainnet), else an error names what is missing.
    """
    service_name = None
    if deployment is not None:
        dep = Deployment.load(deployment)
        rpc_url = rpc_url or dep.rpc_url
        chain_id = chain_id or dep.chain_id
        ledger = ledger or dep.contracts.ledger
        inference = inference or dep.contracts.inference
        service_name = dep.service_name
    if rpc_url is None:
        raise ConfigError("no network: give --rpc-url (and contract addresses) or --deployment")
    rpc_url = PUBLIC_RPC.get(rpc_url, rpc_url)
    if chain_id is None:
        chain_id = await read_chain_id(rpc_url)
    if (ledger is None or inference is None) and chain_id in (TESTNET_CHAIN_ID, MAINNET_CHAIN_ID):
        default_ledger, default_inference = SDK_CONTRACTS[chain_id]
        ledger = ledger or default_ledger
        inference = inference or default_inference
    if ledger is None or inference is None:
        missing = [n for n, v in (("--ledger", ledger), ("--inference", inference)) if v is None]
        raise ConfigError(f"chain {chain_id} has no default contracts: give {' and '.join(missing)}")
    extra = {"service_name": service_name} if service_name else {}
    try:
        return NetworkConfig(rpc_url=rpc_url, chain_id=chain_id, ledger=ledger, inference=inference, **extra)
    except ValueError as exc:
        raise ConfigError(f"invalid network settings: {exc}") from exc
