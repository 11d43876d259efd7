"""Turning one user's unsettled requests (and open debts) into a signed settlement entry.

**Nonce policy.** An entry's nonce is ``max(account.nonce on chain, highest nonce we
ever journaled for the user) + 1``. It is therefore strictly above what the
contract has consumed (``nonce > account.nonce`` is the contract's rule) and above
every nonce we signed before, whatever became of that entry -- a signature is
never reused for different contents. Sequential nonces (rather than time-based
ones) keep working after an account is deleted and re-created (the chain keeps
its nonce) and after a switch from a broker that used time-based nonces (we
continue above them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from eth_utils.address import to_checksum_address

from zgserve.broker.settlement.journal import PreparedEntry
from zgserve.broker.settlement.queries import UnsettledRow
from zgserve.broker.settlement.receipts import Receipt, ReceiptTree, carry_over_receipt
from zgserve.chain.eip712 import settlement_digest
from zgserve.chain.types import TEESettlementData


class DigestSigner(Protocol):
    """The settlement signer registered on-chain as ``teeSignerAddress``."""

    address: str

    def sign_digest(self, digest: bytes) -> str:
        """``0x`` + r‖s‖v (65 bytes, low s, v 27/28) over a 32-byte digest."""
        ...


@dataclass(frozen=True, slots=True)
class SigningContext:
    """Where signatures are valid: the chain, the InferenceServing proxy and the provider."""

    chain_id: int
    contract: str
    provider: str
    signer: DigestSigner


def next_nonce(chain_nonce: int, journaled: int | None) -> int:
    """The nonce policy (module doc)."""
    return max(chain_nonce, journaled or 0) + 1


def receipts_for(
    user: str, rows: Sequence[UnsettledRow], debts: Sequence[tuple[int, int, int]]
) -> tuple[list[Receipt], dict[str, int], tuple[int, ...]]:
    """Receipts of ``rows`` plus one carry-over receipt per ``(debt id, source nonce, amount)``."""
    receipts = [
        Receipt(r.request_id, user, r.input_tokens, r.output_tokens, r.fee, r.response_id or "") for r in rows
    ]
    receipts.extend(carry_over_receipt(user, source_nonce, amount) for _, source_nonce, amount in debts)
    row_ids = {r.request_id: r.row_id for r in rows}
    return receipts, row_ids, tuple(d[0] for d in debts)


def sign_entry(
    ctx: SigningContext,
    *,
    user: str,
    nonce: int,
    trigger: str,
    receipts: Sequence[Receipt],
    request_row_ids: dict[str, int],
    debt_ids: tuple[int, ...],
) -> tuple[PreparedEntry, TEESettlementData]:
    """Build the Merkle tree, sign the EIP-712 settlement and return the journal and chain forms."""
    tree = ReceiptTree(receipts)
    total = tree.total_fee
    digest = settlement_digest(
        chain_id=ctx.chain_id,
        contract=ctx.contract,
        provider=ctx.provider,
        user=user,
        total_fee=total,
        requests_hash=tree.root,
        nonce=nonce,
    )
    signature = bytes.fromhex(ctx.signer.sign_digest(digest).removeprefix("0x"))
    entry = PreparedEntry(
        user=user.lower(),
        nonce=nonce,
        total_fee=total,
        requests_hash=tree.root,
        signature=signature,
        trigger=trigger,
        receipts=tuple(tree.receipts),
        request_row_ids=request_row_ids,
        debt_ids=debt_ids,
    )
    data = TEESettlementData(
        user=to_checksum_address(user),
        provider=to_checksum_address(ctx.provider),
        total_fee=total,
        requests_hash=tree.root,
        nonce=nonce,
        signature=signature,
    )
    return entry, data
