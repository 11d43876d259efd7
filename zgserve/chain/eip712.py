"""EIP-712 signing of TEE settlements, and the matching verifier (spec §3).

Domain ``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)``
with name "0G Inference Serving", version "1", the chain id, and the InferenceServing proxy
address; message ``TEESettlement(bytes32 requestsHash,uint256 nonce,address provider,
address user,uint256 totalFee)``. Signatures are 65 bytes ``r‖s‖v`` with v 27/28 and low s,
the only form the contract's OpenZeppelin ``ECDSA.tryRecover`` accepts.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account as EthAccount
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from zgserve.chain.types import TEESettlementData

DOMAIN_NAME = "0G Inference Serving"
DOMAIN_VERSION = "1"
TEE_SETTLEMENT_TYPE = (
    "TEESettlement(bytes32 requestsHash,uint256 nonce,address provider,address user,uint256 totalFee)"
)
TEE_SETTLEMENT_TYPEHASH = keccak(text=TEE_SETTLEMENT_TYPE)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "TEESettlement": [
        {"name": "requestsHash", "type": "bytes32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "provider", "type": "address"},
        {"name": "user", "type": "address"},
        {"name": "totalFee", "type": "uint256"},
    ],
}


def settlement_typed_data(
    *,
    chain_id: int,
    contract: str,
    provider: str,
    user: str,
    total_fee: int,
    requests_hash: bytes,
    nonce: int,
) -> dict[str, Any]:
    """The full EIP-712 typed-data document of one settlement."""
    if len(requests_hash) != 32:
        raise ValueError("requests_hash must be 32 bytes")
    return {
        "types": _TYPES,
        "primaryType": "TEESettlement",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(contract),
        },
        "message": {
            "requestsHash": requests_hash,
            "nonce": nonce,
            "provider": to_checksum_address(provider),
            "user": to_checksum_address(user),
            "totalFee": total_fee,
        },
    }


def settlement_message(**fields: Any) -> SignableMessage:
    """The EIP-712 message: ``header`` is the domain separator, ``body`` the struct hash."""
    return encode_typed_data(full_message=settlement_typed_data(**fields))


def settlement_digest(**fields: Any) -> bytes:
    """``keccak256(0x1901 ‖ domainSeparator ‖ structHash)``: what the TEE key signs."""
    message = settlement_message(**fields)
    return keccak(b"\x19" + message.version + message.header + message.body)


def sign_settlement(
    private_key: str | bytes,
    *,
    chain_id: int,
    contract: str,
    provider: str,
    user: str,
    total_fee: int,
    requests_hash: bytes,
    nonce: int,
) -> TEESettlementData:
    """Sign one settlement with the TEE signer's key and return the contract's input struct."""
    message = settlement_message(
        chain_id=chain_id,
        contract=contract,
        provider=provider,
        user=user,
        total_fee=total_fee,
        requests_hash=requests_hash,
        nonce=nonce,
    )
    signed = EthAccount.sign_message(message, private_key)
    # eth-account signs deterministically with low s and v in {27, 28}: the contract's form.
    signature = signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes([signed.v])
    return TEESettlementData(
        user=to_checksum_address(user),
        provider=to_checksum_address(provider),
        total_fee=total_fee,
        requests_hash=requests_hash,
        nonce=nonce,
        signature=signature,
    )


def recover_settlement_signer(data: TEESettlementData, *, chain_id: int, contract: str) -> str | None:
    """The address that signed ``data``, or None where the contract would reject the signature.

    Mirrors ``ECDSA.tryRecover``: exactly 65 bytes, v 27 or 28, s in the lower half order.
    """
    sig = data.signature
    if len(sig) != 65 or sig[64] not in (27, 28):
        return None
    s = int.from_bytes(sig[32:64], "big")
    if s == 0 or s > _SECP256K1_N // 2:
        return None
    message = settlement_message(
        chain_id=chain_id,
        contract=contract,
        provider=data.provider,
        user=data.user,
        total_fee=data.total_fee,
        requests_hash=data.requests_hash,
        nonce=data.nonce,
    )
    try:
        return str(EthAccount.recover_message(message, signature=sig))
    except Exception:  # an r that is not on the curve
        return None
