"""Deploy the official contracts the way the network runs them: implementations behind proxies.

The implementations' constructors disable their initializers, so each one sits behind an
ERC-1967 proxy whose constructor runs ``initialize`` (``LedgerManager.initialize(owner)``,
``InferenceServing.initialize(lockTime, ledgerProxy, owner)``); then the inference proxy is
registered in the ledger's service registry as ``inference-v1.0``.

On a fresh chain the deployer's transactions are laid out so that the proxies land at the
addresses the official SDK assumes for chain 31337 (ledger at the deployer's nonce 2,
inference at nonce 6): SDK tools then find the contracts without being told where they are.
"""

from __future__ import annotations

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from zgserve.chain.abi import ContractAbi
from zgserve.chain.client import ChainClient
from zgserve.chain.config import INFERENCE_SERVICE_NAME
from zgserve.chain.errors import ChainError
from zgserve.chain.tx import ContractCall
from zgserve.chain.wallet import Wallet
from zgserve.devnet.artifacts import DevnetArtifacts
from zgserve.devnet.deployment import ContractAddresses

MIN_LOCK_TIME = 3600  # the contract's MIN_LOCKTIME (1 h)
MAX_LOCK_TIME = 604_800  # the contract's MAX_LOCKTIME (7 days)
SERVICE_TYPE = "inference"
SERVICE_VERSION = "v1.0"
SERVICE_DESCRIPTION = "0G inference serving (local devnet)"
# Deployer nonces of the SDK's built-in 31337 addresses (0x9fE4…a6e0 and 0x0165…Eb8F).
SDK_LEDGER_NONCE = 2
SDK_INFERENCE_NONCE = 6


def create_address(sender: str, nonce: int) -> str:
    """The address a CREATE from ``sender`` at ``nonce`` gets: keccak(rlp([sender, nonce]))[12:]."""

    def rlp_bytes(b: bytes) -> bytes:
        return b if len(b) == 1 and b[0] < 0x80 else bytes([0x80 + len(b)]) + b

    nonce_bytes = nonce.to_bytes((nonce.bit_length() + 7) // 8, "big")
    payload = rlp_bytes(bytes.fromhex(sender[2:])) + rlp_bytes(nonce_bytes)
    return str(to_checksum_address(keccak(bytes([0xC0 + len(payload)]) + payload)[12:]))


async def _deploy(owner: Wallet, code: bytes, label: str) -> str:
    receipt = await owner.transact(ContractCall(to=None, data=code, label=f"deploy {label}"))
    if receipt.contract_address is None:
        raise ChainError(f"deploying {label} created no contract ({receipt.tx_hash})")
    return receipt.contract_address


async def _pad_nonce(client: ChainClient, owner: Wallet, target: int) -> None:
    """Spend deployer nonces with empty self-transfers until the next one is ``target``."""
    while await client.pending_nonce(owner.address) < target:
        await owner.transact(ContractCall(to=owner.address, data=b"", label="nonce filler"))


async def deploy_contracts(
    client: ChainClient,
    owner: Wallet,
    artifacts: DevnetArtifacts,
    *,
    lock_time: int = MIN_LOCK_TIME,
    description: str = SERVICE_DESCRIPTION,
) -> ContractAddresses:
    """Deploy both contracts behind proxies, owned by ``owner``, and register the service."""
    if not MIN_LOCK_TIME <= lock_time <= MAX_LOCK_TIME:
        raise ValueError(
            f"lock time {lock_time} s is outside the contract's {MIN_LOCK_TIME}..{MAX_LOCK_TIME}"
        )
    proxy = ContractAbi("ZgProxy", artifacts.proxy.abi)
    ledger_abi = ContractAbi("LedgerManager", artifacts.ledger.abi)
    inference_abi = ContractAbi("InferenceServing", artifacts.inference.abi)
    fresh = await client.pending_nonce(owner.address) == 0

    ledger_impl = await _deploy(owner, artifacts.ledger.creation_code, "LedgerManager implementation")
    inference_impl = await _deploy(
        owner, artifacts.inference.creation_code, "InferenceServing implementation"
    )
    ledger_init = ledger_abi.encode_call("initialize", [owner.address])
    ledger = await _deploy(
        owner,
        artifacts.proxy.creation_code + proxy.encode_constructor([ledger_impl, ledger_init]),
        "LedgerManager proxy",
    )
    if fresh:
        await _pad_nonce(client, owner, SDK_INFERENCE_NONCE)
    inference_init = inference_abi.encode_call("initialize", [lock_time, ledger, owner.address])
    inference = await _deploy(
        owner,
        artifacts.proxy.creation_code + proxy.encode_constructor([inference_impl, inference_init]),
        "InferenceServing proxy",
    )

    if fresh and (ledger, inference) != (
        create_address(owner.address, SDK_LEDGER_NONCE),
        create_address(owner.address, SDK_INFERENCE_NONCE),
    ):
        raise ChainError("the proxies did not land at the SDK's default devnet addresses")
    ledger_contract = client.ledger(owner, address=ledger)
    await ledger_contract.register_service(SERVICE_TYPE, SERVICE_VERSION, inference, description)
    info = await ledger_contract.get_service_info(inference)
    if info.full_name != INFERENCE_SERVICE_NAME:
        raise ChainError(f"service registered as {info.full_name!r}, expected {INFERENCE_SERVICE_NAME!r}")
    return ContractAddresses(
        ledger=ledger,
        inference=inference,
        ledger_implementation=ledger_impl,
        inference_implementation=inference_impl,
    )
