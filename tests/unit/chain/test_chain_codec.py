"""Revert decoding, the ABI codec and the transaction policy, without a chain."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from pydantic import ValidationError

from zgserve.chain.abi import ContractAbi, ContractAbis
from zgserve.chain.config import NetworkConfig, TxPolicy
from zgserve.chain.errors import (
    AccountNotExists,
    ContractCustomError,
    ContractRevert,
    InsufficientAvailableBalance,
    NotOwner,
    PanicError,
    RevertString,
    decode_revert,
)
from zgserve.devnet.deploy import create_address

USER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def _error(name: str, *inputs: tuple[str, str]) -> dict[str, object]:
    return {"type": "error", "name": name, "inputs": [{"name": n, "type": t} for n, t in inputs]}


ABI = [
    _error("AccountNotExists", ("user", "address"), ("provider", "address")),
    _error("InsufficientAvailableBalance", ("available", "uint256"), ("required", "uint256")),
    _error("SomethingElse", ("why", "string")),
    {
        "type": "event",
        "name": "TEESettlementResult",
        "anonymous": False,
        "inputs": [
            {"name": "user", "type": "address", "indexed": True},
            {"name": "status", "type": "uint8", "indexed": False},
            {"name": "unsettledAmount", "type": "uint256", "indexed": False},
        ],
    },
    {
        "type": "function",
        "name": "getLedgerProviders",
        "stateMutability": "view",
        "inputs": [{"name": "user", "type": "address"}, {"name": "serviceName", "type": "string"}],
        "outputs": [{"name": "", "type": "address[]"}],
    },
]
ABIS = ContractAbis(ledger=ContractAbi("LedgerManager", []), inference=ContractAbi("InferenceServing", ABI))


def _revert(signature: str, types: list[str], values: list[object]) -> bytes:
    return keccak(text=signature)[:4] + encode(types, values)


def test_custom_errors_become_typed_exceptions_with_arguments() -> None:
    data = _revert("AccountNotExists(address,address)", ["address", "address"], [USER.lower(), PROVIDER])
    exc = decode_revert(data, ABIS, tx_hash="0xabc")
    assert isinstance(exc, AccountNotExists)
    assert (exc.user, exc.provider, exc.tx_hash, exc.data) == (USER, PROVIDER, "0xabc", data)
    assert data[:4].hex() == "08ca03ac"  # the selector the spec lists

    exc2 = decode_revert(
        _revert("InsufficientAvailableBalance(uint256,uint256)", ["uint256", "uint256"], [1, 2]), ABIS
    )
    assert isinstance(exc2, InsufficientAvailableBalance)
    assert (exc2.available, exc2.required) == (1, 2)
    assert str(exc2) == "InsufficientAvailableBalance(available=1, required=2)"


def test_other_abi_errors_stay_generic_but_decoded() -> None:
    exc = decode_revert(_revert("SomethingElse(string)", ["string"], ["because"]), ABIS)
    assert type(exc) is ContractCustomError
    assert (exc.error_name, exc.error_args) == ("SomethingElse", {"why": "because"})


def test_revert_strings_panics_and_unknown_data() -> None:
    owner = decode_revert(_revert("Error(string)", ["string"], ["Ownable: caller is not the owner"]), ABIS)
    assert isinstance(owner, NotOwner)
    other = decode_revert(_revert("Error(string)", ["string"], ["nope"]), ABIS)
    assert type(other) is RevertString
    assert other.reason == "nope"
    panic = decode_revert(_revert("Panic(uint256)", ["uint256"], [0x11]), ABIS)
    assert isinstance(panic, PanicError)
    assert panic.panic_code == 0x11
    assert type(decode_revert(b"", ABIS)) is ContractRevert
    assert type(decode_revert(b"\xde\xad\xbe\xef", ABIS)) is ContractRevert
    # A known selector with garbage after it does not crash decoding.
    assert (
        type(decode_revert(keccak(text="AccountNotExists(address,address)")[:4] + b"\x01", ABIS))
        is ContractRevert
    )


def test_codec_round_trip_and_event_decoding() -> None:
    abi = ABIS.inference
    call = abi.encode_call("getLedgerProviders", [USER, "inference-v1.0"])
    assert call[:4] == keccak(text="getLedgerProviders(address,string)")[:4]
    assert abi.decode_output("getLedgerProviders", encode(["address[]"], [[PROVIDER.lower()]])) == (
        (PROVIDER,),
    )
    log = {
        "address": PROVIDER.lower(),
        "topics": [keccak(text="TEESettlementResult(address,uint8,uint256)"), encode(["address"], [USER])],
        "data": encode(["uint8", "uint256"], [1, 5]),
        "blockNumber": 7,
        "transactionHash": b"\x01" * 32,
        "logIndex": 0,
    }
    event = abi.decode_log(log)
    assert event is not None
    assert event.args == {"user": USER, "status": 1, "unsettledAmount": 5}
    assert (event.address, event.tx_hash) == (PROVIDER, "0x" + "01" * 32)


def test_tx_policy_buffers_clamps_and_backs_off() -> None:
    policy = TxPolicy(
        gas_buffer_percent=20, gas_price_buffer_percent=0, gas_price_floor=10, gas_price_cap=100
    )
    assert policy.gas_limit(100_000) == 120_000
    assert policy.clamp_gas_price(1) == 10
    assert policy.clamp_gas_price(50) == 50
    assert policy.clamp_gas_price(10**9) == 100
    assert [policy.backoff(i) for i in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    with pytest.raises(ValidationError):
        TxPolicy(gas_price_floor=10, gas_price_cap=5)


def test_network_config_is_strict() -> None:
    config = NetworkConfig(rpc_url="http://x", chain_id=16602, ledger=USER.lower())
    assert config.ledger == USER
    assert config.chain_name == "0G Galileo testnet"
    with pytest.raises(ValidationError, match="not an address"):
        NetworkConfig(rpc_url="http://x", chain_id=16602, inference="0x1234")
    with pytest.raises(ValidationError):
        NetworkConfig(rpc_url="http://x", chain_id=16602, unknown_key=1)  # type: ignore[call-arg]


def test_create_address_matches_the_sdk_defaults() -> None:
    deployer = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert create_address(deployer, 2) == "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
    assert create_address(deployer, 6) == "0x0165878A594ca255338adfa4d48449f69242Eb8F"
