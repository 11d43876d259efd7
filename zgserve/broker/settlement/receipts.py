"""Per-request receipts and the Merkle tree whose root is a settlement's ``requestsHash``.

The contract signs ``requestsHash`` but never reads it, so we make it an audit
commitment: the root of a binary Merkle tree over the receipts a settlement
charges. A user who is given the receipts and their proofs can check each one
against the signed settlement entry without trusting the broker's database.

Encoding (stable; changing it is a protocol change):

* **Receipt** = ``(requestId: string, user: address, inputTokens: uint256,
  outputTokens: uint256, fee: uint256, signatureId: string)``.
* **Leaf** = ``keccak256(0x00 ‖ abi.encode(requestId, user, inputTokens,
  outputTokens, fee, signatureId))`` with standard Solidity ABI encoding of that
  tuple (the strings are dynamic, hence length-prefixed and unambiguous).
* **Inner node** = ``keccak256(0x01 ‖ left ‖ right)``. The 0x00/0x01 prefixes keep
  a leaf from ever being read as an inner node (second-preimage safety).
* **Order**: receipts are sorted by ``requestId`` (UTF-8 bytes, ascending); a
  settlement never contains the same ``requestId`` twice.
* **Odd levels**: the last node of a level with an odd count is promoted to the
  next level unchanged (it is not duplicated, so no two receipt lists share a root).
* **Root** of a single receipt is its leaf. An empty list has no root.

A **carry-over receipt** reclaims what a PARTIAL settlement left unpaid: its
``requestId`` is ``"debt:<nonce of the partial settlement>"``, tokens are 0, the
fee is the unpaid remainder and ``signatureId`` is empty.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
DEBT_PREFIX = "debt:"
RECEIPT_ABI_TYPES = ("string", "address", "uint256", "uint256", "uint256", "string")


@dataclass(frozen=True)
class Receipt:
    """What one request cost, as committed to by a settlement."""

    request_id: str
    user: str
    input_tokens: int
    output_tokens: int
    fee: int
    signature_id: str

    def leaf(self) -> bytes:
        """The 32-byte Merkle leaf of this receipt."""
        return receipt_leaf(self)

    @property
    def is_carry_over(self) -> bool:
        return self.request_id.startswith(DEBT_PREFIX)

    def to_json(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id,
            "user": to_checksum_address(self.user),
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "fee": str(self.fee),
            "signatureId": self.signature_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        return cls(
            request_id=str(data["requestId"]),
            user=str(data["user"]),
            input_tokens=int(data["inputTokens"]),
            output_tokens=int(data["outputTokens"]),
            fee=int(str(data["fee"])),
            signature_id=str(data["signatureId"]),
        )


def carry_over_receipt(user: str, source_nonce: int, unpaid: int) -> Receipt:
    """The receipt that reclaims the unpaid remainder of the PARTIAL settlement ``source_nonce``."""
    return Receipt(f"{DEBT_PREFIX}{source_nonce}", user, 0, 0, unpaid, "")


def receipt_leaf(r: Receipt) -> bytes:
    if min(r.input_tokens, r.output_tokens, r.fee) < 0:
        raise ValueError(f"receipt {r.request_id!r} has a negative amount")
    payload = abi_encode(
        list(RECEIPT_ABI_TYPES),
        [r.request_id, to_checksum_address(r.user), r.input_tokens, r.output_tokens, r.fee, r.signature_id],
    )
    return keccak(LEAF_PREFIX + payload)


def node_hash(left: bytes, right: bytes) -> bytes:
    return keccak(NODE_PREFIX + left + right)


def canonical_order(receipts: Sequence[Receipt]) -> list[Receipt]:
    """Receipts in tree order (by ``requestId`` bytes); duplicates are refused."""
    ordered = sorted(receipts, key=lambda r: r.request_id.encode())
    for a, b in itertools.pairwise(ordered):
        if a.request_id == b.request_id:
            raise ValueError(f"request {a.request_id!r} appears twice in one settlement")
    return ordered


@dataclass(frozen=True)
class MerkleProof:
    """Where a leaf sits (``index`` of ``count``) and the siblings on its path to the root."""

    index: int
    count: int
    siblings: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "siblings": ["0x" + s.hex() for s in self.siblings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MerkleProof:
        return cls(
            int(data["index"]),
            int(data["count"]),
            tuple(bytes.fromhex(str(s).removeprefix("0x")) for s in data["siblings"]),
        )


class ReceiptTree:
    """The Merkle tree over a settlement's receipts (already in canonical order)."""

    def __init__(self, receipts: Sequence[Receipt]) -> None:
        if not receipts:
            raise ValueError("a settlement needs at least one receipt")
        self.receipts = canonical_order(receipts)
        self._levels: list[list[bytes]] = [[r.leaf() for r in self.receipts]]
        while len(self._levels[-1]) > 1:
            level = self._levels[-1]
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self._levels.append(nxt)

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    @property
    def total_fee(self) -> int:
        return sum(r.fee for r in self.receipts)

    def proof(self, index: int) -> MerkleProof:
        if not 0 <= index < len(self.receipts):
            raise IndexError(index)
        siblings: list[bytes] = []
        i = index
        for level in self._levels[:-1]:
            sib = i ^ 1
            if sib < len(level):
                siblings.append(level[sib])
            i //= 2
        return MerkleProof(index, len(self.receipts), tuple(siblings))


def merkle_root(receipts: Sequence[Receipt]) -> bytes:
    """``requestsHash`` for these receipts."""
    return ReceiptTree(receipts).root


def verify_proof(leaf: bytes, proof: MerkleProof, root: bytes) -> bool:
    """Recompute the root from ``leaf`` and ``proof``; independent of :class:`ReceiptTree`."""
    if not 0 <= proof.index < proof.count:
        return False
    node, i, width = leaf, proof.index, proof.count
    siblings = list(proof.siblings)
    while width > 1:
        if i % 2 == 1:
            if not siblings:
                return False
            node = node_hash(siblings.pop(0), node)
        elif i + 1 < width:
            if not siblings:
                return False
            node = node_hash(node, siblings.pop(0))
        # else: the last node of an odd level is promoted unchanged
        i //= 2
        width = (width + 1) // 2
    return not siblings and node == root
