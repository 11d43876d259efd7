"""EIP-712 settlement signing against the worked example of the protocol spec (§3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_keys import keys
from eth_utils.crypto import keccak

from zgserve.chain.eip712 import (
    TEE_SETTLEMENT_TYPEHASH,
    recover_settlement_signer,
    settlement_digest,
    settlement_message,
    sign_settlement,
)

TEE_KEY = "0x" + "11" * 32
TEE_ADDRESS = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
EXAMPLE = {
    "chain_id": 31337,
    "contract": "0x00000000000000000000000000000000000A0002",
    "provider": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "user": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "requests_hash": keccak(text="example requests hash"),
    "nonce": 17_000_000_000_000_000,
    "total_fee": 123_456_789_000,
}
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_typehash_and_requests_hash_match_spec() -> None:
    assert TEE_SETTLEMENT_TYPEHASH.hex() == "6e525043a6c7323bdf60ce222f35127cdd9d8e867ec6350c83fcc254ed18b756"
    assert EXAMPLE["requests_hash"] == bytes.fromhex(
        "5af24281571c5f83e0cf180e197dfa54957b6af6564079b37f30f21ef20e75dc"
    )


def test_domain_separator_struct_hash_and_digest_match_spec() -> None:
    message = settlement_message(**EXAMPLE)
    assert message.header.hex() == "546314cf2f41bc700a343f597da37b82deee7c7bef3f0c68e6adc1027d958b02"
    assert message.body.hex() == "4f3bbabb9cb89b0cb697b2aa725382c900b9a4d55151c954e6745f7042bbdd4f"
    assert (
        settlement_digest(**EXAMPLE).hex()
        == "b221c30ce5da31ee18a406f8ba8f93761e2d5393a184e73ade3cce134e4488cf"
    )


def test_signature_matches_spec_exactly() -> None:
    data = sign_settlement(TEE_KEY, **EXAMPLE)
    assert data.signature.hex() == (
        "5e028421e875956b59bb6f713e086e5f47f7caeb434e7c935611e1519b5ec01a"
        "5e7173150a56d310d06caf74d9cdde2a00facdffeb5b9ca2dc41076f5afe2ed41c"
    )
    assert data.signature[64] == 28
    assert (data.user, data.provider, data.total_fee, data.nonce) == (
        EXAMPLE["user"],
        EXAMPLE["provider"],
        EXAMPLE["total_fee"],
        EXAMPLE["nonce"],
    )


def test_round_trip_with_independent_recovery() -> None:
    data = sign_settlement(TEE_KEY, **EXAMPLE)
    # Recover with eth-keys directly from the digest, independent of eth-account's helpers.
    sig = data.signature
    vrs = (sig[64] - 27, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))
    public = keys.Signature(vrs=vrs).recover_public_key_from_msg_hash(settlement_digest(**EXAMPLE))
    assert public.to_checksum_address() == TEE_ADDRESS
    assert recover_settlement_signer(data, chain_id=31337, contract=EXAMPLE["contract"]) == TEE_ADDRESS


@pytest.mark.parametrize(
    ("change", "binds"),
    [
        ({"chain_id": 16602}, "chain id"),
        ({"contract": "0x00000000000000000000000000000000000A0003"}, "contract"),
    ],
)
def test_signature_is_bound_to_chain_and_contract(change: dict[str, object], binds: str) -> None:
    data = sign_settlement(TEE_KEY, **EXAMPLE)
    params = {"chain_id": 31337, "contract": EXAMPLE["contract"]} | change
    assert recover_settlement_signer(data, **params) != TEE_ADDRESS, binds  # type: ignore[arg-type]


def test_tampered_fee_recovers_someone_else() -> None:
    data = replace(sign_settlement(TEE_KEY, **EXAMPLE), total_fee=EXAMPLE["total_fee"] + 1)
    assert recover_settlement_signer(data, chain_id=31337, contract=EXAMPLE["contract"]) != TEE_ADDRESS


def test_verifier_rejects_forms_the_contract_rejects() -> None:
    good = sign_settlement(TEE_KEY, **EXAMPLE)
    sig = good.signature
    s = int.from_bytes(sig[32:64], "big")
    high_s = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    for bad in (sig[:64], sig[:64] + bytes([sig[64] - 27]), high_s):
        data = replace(good, signature=bad)
        assert recover_settlement_signer(data, chain_id=31337, contract=EXAMPLE["contract"]) is None


def test_requests_hash_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        sign_settlement(TEE_KEY, **(EXAMPLE | {"requests_hash": b"short"}))
