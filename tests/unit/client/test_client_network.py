"""Resolving a user's network: explicit values, deployment files, the SDK's default addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from zgserve.client.network import SDK_CONTRACTS, resolve_network
from zgserve.common.errors import ConfigError
from zgserve.devnet.deployment import ContractAddresses, Deployment

LEDGER = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
INFERENCE = "0x0165878A594ca255338adfa4d48449f69242Eb8F"


async def test_public_networks_default_to_the_sdk_addresses() -> None:
    testnet = await resolve_network(rpc_url="testnet", chain_id=16602)
    assert testnet.rpc_url == "https://evmrpc-testnet.0g.ai"
    assert (testnet.ledger, testnet.inference) == SDK_CONTRACTS[16602]
    mainnet = await resolve_network(rpc_url="https://rpc.example", chain_id=16661, inference=INFERENCE)
    assert mainnet.ledger == SDK_CONTRACTS[16661][0]
    assert mainnet.inference == INFERENCE  # explicit values win


async def test_other_chains_need_addresses() -> None:
    with pytest.raises(ConfigError, match="--ledger and --inference"):
        await resolve_network(rpc_url="http://127.0.0.1:1", chain_id=31337)
    with pytest.raises(ConfigError, match="no network"):
        await resolve_network()
    with pytest.raises(ConfigError, match="invalid network"):
        await resolve_network(rpc_url="http://x", chain_id=31337, ledger="0x12", inference=INFERENCE)
    with pytest.raises(ConfigError, match="cannot read the chain id"):
        await resolve_network(rpc_url="http://127.0.0.1:1", ledger=LEDGER, inference=INFERENCE)


async def test_deployment_file(tmp_path: Path) -> None:
    deployment = Deployment(
        chain_id=31337,
        rpc_url="http://127.0.0.1:8545",
        contracts=ContractAddresses(ledger=LEDGER, inference=INFERENCE),
        service_name="inference-v1.0",
    )
    path = deployment.save(tmp_path / "deployment.json")
    network = await resolve_network(deployment=path)
    assert (network.rpc_url, network.chain_id, network.ledger, network.inference) == (
        "http://127.0.0.1:8545",
        31337,
        LEDGER,
        INFERENCE,
    )
    other = await resolve_network(deployment=path, rpc_url="http://10.0.0.1:8545")
    assert other.rpc_url == "http://10.0.0.1:8545"
