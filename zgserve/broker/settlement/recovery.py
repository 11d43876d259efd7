"""Closing journaled batches: recording mined outcomes, and reconciling after a restart.

For each open batch (journaled, outcome not recorded) the chain decides:

1. Read the provider wallet's *mined* transaction count, **then** the batch's receipt
   (in this order, so a transaction mined between the two reads is seen as mined).
2. A receipt exists: record it (statuses from the ``TEESettlementResult`` events;
   status 0 means reverted and every claim is given back).
3. No receipt and the wallet's count is past the batch's sender nonce: another
   transaction took that nonce, so ours can never be mined. Users whose account
   nonce has nevertheless reached the entry's nonce are counted as settled
   (``unverified``, alerted); every other claim is given back.
4. Otherwise the transaction is pending or was never broadcast (a crash before
   send): broadcast the journaled raw bytes again -- the same signed transaction,
   so it can land at most once -- and wait a bounded time for the receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from eth_utils.address import to_checksum_address
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.settlement import journal
from zgserve.broker.settlement.journal import EntryOutcome, OpenBatch
from zgserve.broker.settlement.metrics import SettlementMetrics
from zgserve.broker.settlement.models import BatchState, EntryStatus
from zgserve.chain.client import ChainClient
from zgserve.chain.errors import ReceiptTimeout
from zgserve.chain.inference import InferenceServing
from zgserve.chain.tx import Receipt
from zgserve.chain.wallet import Wallet

logger = logging.getLogger(__name__)

OnSettled = Callable[[list[str], int], None]
"""Told ``(users, fees of recorded requests newly settled)`` after outcomes are committed."""

_ALERT_STATUSES = {
    EntryStatus.NO_TEE_SIGNER: "no_tee_signer",
    EntryStatus.INVALID_SIGNATURE: "invalid_signature",
    EntryStatus.PROVIDER_MISMATCH: "provider_mismatch",
    EntryStatus.UNVERIFIED: "unverified",
    EntryStatus.REVERTED: "reverted",
}


class BatchCloser:
    """Records outcomes of journaled batches (see the module doc)."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        chain: ChainClient,
        inference: InferenceServing,
        wallet: Wallet,
        metrics: SettlementMetrics,
        on_settled: OnSettled | None,
        receipt_timeout: float,
    ) -> None:
        self.db = db
        self.chain = chain
        self.inference = inference
        self.wallet = wallet
        self.metrics = metrics
        self.on_settled = on_settled
        self.receipt_timeout = receipt_timeout

    async def record_receipt(self, batch_id: int, receipt: Receipt) -> list[EntryOutcome] | None:
        """Commit a mined batch's outcome; None if another process recorded it first."""
        if receipt.status != 1:
            async with self.db.begin() as conn:
                outcomes = await journal.release_batch(
                    conn, batch_id, BatchState.REVERTED, error=f"transaction {receipt.tx_hash} reverted"
                )
            if outcomes is not None:
                logger.error("settlement transaction %s reverted; its fees stay unsettled", receipt.tx_hash)
                self.metrics.transactions.labels(BatchState.REVERTED).inc()
                self._count_gas(receipt)
        else:
            results = self.inference.settlement_results(receipt)
            async with self.db.begin() as conn:
                outcomes = await journal.record_outcome(
                    conn,
                    batch_id,
                    gas_used=receipt.gas_used,
                    block_number=receipt.block_number,
                    results=results,
                )
            if outcomes is not None:
                self.metrics.transactions.labels(BatchState.DONE).inc()
                self._count_gas(receipt)
        if outcomes is not None:
            self._observe(outcomes)
        return outcomes

    def _count_gas(self, receipt: Receipt) -> None:
        self.metrics.gas_used.inc(receipt.gas_used)
        self.metrics.gas_cost.inc(receipt.fee)

    def _observe(self, outcomes: Sequence[EntryOutcome]) -> None:
        newly_settled = 0
        for o in outcomes:
            self.metrics.entries.labels(o.status).inc()
            if o.status in EntryStatus.SETTLED:
                newly_settled += o.requests_fee
                self.metrics.fees_settled.inc(o.paid)
                if o.unpaid:
                    self.metrics.fees_unpaid.inc(o.unpaid)
                    logger.warning(
                        "settlement of %s (nonce %d) was PARTIAL: %d neuron unpaid, recorded as debt",
                        to_checksum_address(o.user),
                        o.nonce,
                        o.unpaid,
                    )
            kind = _ALERT_STATUSES.get(o.status)
            if kind is not None:
                self.metrics.alerts.labels(kind).inc()
                logger.error(
                    "settlement of %s (nonce %d) ended %s; its fees are kept for a later settlement",
                    to_checksum_address(o.user),
                    o.nonce,
                    o.status,
                )
            elif o.status == EntryStatus.INVALID_NONCE:
                logger.warning("settlement of %s: nonce %d already used; resyncing", o.user, o.nonce)
        if self.on_settled is not None and outcomes:
            self.on_settled(sorted({o.user for o in outcomes}), newly_settled)

    async def _mined_count(self) -> int:
        value = await self.chain.request("eth_getTransactionCount", [self.wallet.address, "latest"])
        return int(value, 16) if isinstance(value, str) else int(value)

    async def reconcile(self, batch: OpenBatch) -> list[EntryOutcome] | None:
        """Close ``batch`` if the chain allows it now; None while it is still pending."""
        mined_count = await self._mined_count()
        receipt = await self.chain.get_receipt(batch.tx_hash)
        # An empty list below means another process closed the batch first.
        if receipt is not None:
            return await self.record_receipt(batch.id, receipt) or []
        if mined_count > batch.tx_nonce:
            return await self._abandon(batch) or []
        logger.info(
            "re-broadcasting journaled settlement transaction %s (nonce %d)", batch.tx_hash, batch.tx_nonce
        )
        await self.chain.send_raw(batch.raw_tx)
        async with self.db.begin() as conn:
            await journal.mark_sent(conn, batch.id)
        try:
            receipt = await self.chain.wait_receipt(batch.tx_hash, self.receipt_timeout, check=False)
        except ReceiptTimeout:
            logger.warning("settlement transaction %s still pending", batch.tx_hash)
            return None
        return await self.record_receipt(batch.id, receipt) or []

    async def _abandon(self, batch: OpenBatch) -> list[EntryOutcome] | None:
        users = [to_checksum_address(e.user) for e in batch.entries]
        accounts = await self.inference.get_batch_accounts_by_users(users)
        landed = [
            e.id for e, a in zip(batch.entries, accounts, strict=True) if a.exists and a.nonce >= e.nonce
        ]
        async with self.db.begin() as conn:
            outcomes = await journal.release_batch(
                conn,
                batch.id,
                BatchState.ABANDONED,
                error=f"sender nonce {batch.tx_nonce} was used by another transaction",
                landed_entry_ids=landed,
            )
        await self.wallet.reset_nonce()
        if outcomes is not None:
            logger.warning(
                "settlement transaction %s can no longer be mined (nonce %d reused); %d entries released",
                batch.tx_hash,
                batch.tx_nonce,
                len(batch.entries) - len(landed),
            )
            self.metrics.transactions.labels(BatchState.ABANDONED).inc()
            self._observe(outcomes)
        return outcomes

    async def reconcile_all(self) -> tuple[list[EntryOutcome], int]:
        """Reconcile every open batch, oldest first; returns outcomes and how many stay open."""
        async with self.db.connect() as conn:
            batches = await journal.open_batches(conn)
        outcomes: list[EntryOutcome] = []
        still_open = 0
        for batch in batches:
            closed = await self.reconcile(batch)
            if closed is None:
                still_open += 1
            else:
                outcomes.extend(closed)
        self.metrics.open_batches.set(still_open)
        return outcomes, still_open
