"""Receipt encoding and Merkle proofs, checked against an independent recomputation."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak

from zgserve.broker.settlement.receipts import (
    MerkleProof,
    Receipt,
    ReceiptTree,
    carry_over_receipt,
    merkle_root,
    verify_proof,
)

USER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def receipts(n: int) -> list[Receipt]:
    return [Receipt(f"req-{i:04d}", USER, 10 + i, 5 + i, 1000 * (i + 1), f"chat-{i}") for i in range(n)]


def test_leaf_encoding_is_the_documented_one() -> None:
    r = Receipt("req-1", USER.lower(), 11, 3, 17_000_000_000, "chatcmpl-1")
    payload = encode(
        ["string", "address", "uint256", "uint256", "uint256", "string"],
        ["req-1", USER, 11, 3, 17_000_000_000, "chatcmpl-1"],
    )
    assert r.leaf() == keccak(b"\x00" + payload)


def test_small_trees_by_hand() -> None:
    a, b, c = (r.leaf() for r in receipts(3))
    node = lambda x, y: keccak(b"\x01" + x + y)  # noqa: E731
    assert merkle_root(receipts(1)) == a
    assert merkle_root(receipts(2)) == node(a, b)
    assert merkle_root(receipts(3)) == node(node(a, b), c)  # odd node promoted, not duplicated


def test_order_is_canonical_and_duplicates_refused() -> None:
    rs = receipts(7)
    assert merkle_root(rs) == merkle_root(list(reversed(rs)))
    with pytest.raises(ValueError, match="twice"):
        ReceiptTree([*rs, rs[0]])
    with pytest.raises(ValueError, match="at least one"):
        ReceiptTree([])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 50, 101])
def test_every_proof_verifies_and_nothing_else_does(n: int) -> None:
    tree = ReceiptTree(receipts(n))
    for i, r in enumerate(tree.receipts):
        proof = tree.proof(i)
        assert verify_proof(r.leaf(), proof, tree.root)
        assert verify_proof(r.leaf(), MerkleProof.from_json(proof.to_json()), tree.root)
        tampered = Receipt(r.request_id, r.user, r.input_tokens, r.output_tokens, r.fee + 1, r.signature_id)
        assert not verify_proof(tampered.leaf(), proof, tree.root)
        if n > 1:
            assert not verify_proof(r.leaf(), MerkleProof((i + 1) % n, n, proof.siblings), tree.root)
            assert not verify_proof(r.leaf(), MerkleProof(i, n, (*proof.siblings, b"\0" * 32)), tree.root)


def test_json_round_trip_and_carry_over() -> None:
    r = receipts(1)[0]
    assert Receipt.from_json(r.to_json()) == Receipt(
        r.request_id, USER, r.input_tokens, r.output_tokens, r.fee, r.signature_id
    )
    debt = carry_over_receipt(USER, 42, 999)
    assert debt.is_carry_over
    assert (debt.request_id, debt.fee) == ("debt:42", 999)
    assert ReceiptTree([debt, *receipts(2)]).total_fee == 999 + 1000 + 2000
