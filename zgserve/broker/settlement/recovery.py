"""Closing journaled batches: recording mined outcomes, replacing stuck transactions, and
reconciling after a restart.

A batch has one or more journaled candidate transactions: the first one and its
replacements, all with the batch's sender nonce, so at most one can be mined. For
each open batch (journaled, outcome not recorded) the chain decides:

1. Read the provider wallet's *mined* transaction count, **then** the receipts of all
   the batch's candidates (in this order, so a candidate mined between the two reads
   is seen as mined).
2. A candidate's receipt exists: record it (statuses from the ``TEESettlementResult``
   events; status 0 means reverted and every claim is given back). Whichever
   candidate it is, the entries and their settlement nonces are the same.
3. No receipt and the wallet's count is past the batch's sender nonce: a transaction
   that is none of our candidates took that nonce, so the batch can never be mined.
   Users whose account nonce has nevertheless reached the entry's nonce are counted
   as settled (``unverified``, alerted); every other claim is given back.
4. Otherwise the newest candidate is pending or was never broadcast (a crash before
   send). If it was first broadcast ``replaceAfterSeconds`` ago or more, it is
   *replaced* (:mod:`.replacement`): re-signed at a higher gas price, journaled,
   then broadcast; else its journaled raw bytes are broadcast again. Then a bounded
   wait for the receipt of any candidate. A broadcast the node refuses (an
   underpriced replacement, a nonce already used) is logged and left to the chain
   to decide in a later round.

Every write here, and every broadcast, is fenced by the settlement lease
(:meth:`Lease.fence` in the same transaction): a closer whose process lost the
lease raises :class:`~zgserve.broker.settlement.lease.LeaseLost` and leaves the
batch to the new holder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from eth_utils.address import to_checksum_address
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zgserve.broker.db.notify import publish
from zgserve.broker.settlement import journal
from zgserve.broker.settlement.journal import EntryOutcome, OpenBatch
from zgserve.broker.settlement.lease import Lease
from zgserve.broker.settlement.metrics import SettlementMetrics
from zgserve.broker.settlement.models import BatchState, EntryStatus
from zgserve.broker.settlement.replacement import ReplacementPolicy
from zgserve.chain.client import ChainClient
from zgserve.chain.errors import ReceiptTimeout, RpcError
from zgserve.chain.inference import InferenceServing
from zgserve.chain.tx import Receipt
from zgserve.chain.wallet import Wallet

logger = logging.getLogger(__name__)

OnSettled = Callable[[list[str], int], None]
"""Told ``(users, fees of recorded requests newly settled)`` after outcomes are committed."""

CrashHook = Callable[[str], None]
"""The engine's fault-injection hook, called with a point's name (see ``engine``)."""

_ALERT_STATUSES = {
    EntryStatus.NO_TEE_SIGNER: "no_tee_signer",
    EntryStatus.INVALID_SIGNATURE: "invalid_signature",
    EntryStatus.PROVIDER_MISMATCH: "provider_mismatch",
    EntryStatus.UNVERIFIED: "unverified",
    EntryStatus.REVERTED: "reverted",
}


async def _tell_replicas(conn: AsyncConnection, outcomes: Sequence[EntryOutcome] | None) -> None:
    """Other broker processes drop these users' cached balances when ``conn`` commits."""
    if outcomes:
        await publish(conn, [o.user for o in outcomes])


class BatchCloser:
    """Records outcomes of journaled batches (see the module doc)."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        chain: ChainClient,
        inference: InferenceServing,
        wallet: Wallet,
        lease: Lease,
        metrics: SettlementMetrics,
        on_settled: OnSettled | None,
        receipt_timeout: float,
        replacement: ReplacementPolicy,
        clock: Callable[[], float] = time.time,
        crash: CrashHook | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.inference = inference
        self.wallet = wallet
        self.lease = lease
        self.metrics = metrics
        self.on_settled = on_settled
        self.receipt_timeout = receipt_timeout
        self.replacement = replacement
        self.clock = clock
        self._crash = crash or (lambda _point: None)
        self._capped: set[int] = set()  # batches alerted as held back by the gas price cap

    async def record_receipt(self, batch_id: int, receipt: Receipt) -> list[EntryOutcome] | None:
        """Commit a mined batch's outcome; None if another process recorded it first."""
        if receipt.status != 1:
            async with self.lease.fenced() as conn:
                outcomes = await journal.release_batch(
                    conn,
                    batch_id,
                    BatchState.REVERTED,
                    error=f"transaction {receipt.tx_hash} reverted",
                    tx_hash=receipt.tx_hash,
                )
                await _tell_replicas(conn, outcomes)
            if outcomes is not None:
                logger.error("settlement transaction %s reverted; its fees stay unsettled", receipt.tx_hash)
                self.metrics.transactions.labels(BatchState.REVERTED).inc()
                self._count_gas(receipt)
        else:
            results = self.inference.settlement_results(receipt)
            async with self.lease.fenced() as conn:
                outcomes = await journal.record_outcome(
                    conn,
                    batch_id,
                    gas_used=receipt.gas_used,
                    block_number=receipt.block_number,
                    results=results,
                    tx_hash=receipt.tx_hash,
                )
                await _tell_replicas(conn, outcomes)
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
        receipt = await self.chain.any_receipt(batch.tx_hashes)
        # An empty list below means another process closed the batch first.
        if receipt is not None:
            return await self.record_receipt(batch.id, receipt) or []
        if mined_count > batch.tx_nonce:
            return await self._abandon(batch) or []
        hashes = batch.tx_hashes
        latest = batch.latest
        replaced = None
        if self.replacement.due(latest.broadcast_at, self.clock()):
            replaced = await self._replace(batch)
        if replaced is not None:
            hashes.append(replaced)
        else:
            logger.info(
                "re-broadcasting journaled settlement transaction %s (nonce %d)",
                latest.tx_hash,
                batch.tx_nonce,
            )
            refused = await self.broadcast(batch.id, latest.tx_hash, latest.raw_tx)
            if refused is not None:
                logger.warning("node refused settlement transaction %s: %s", latest.tx_hash, refused)
        try:
            receipt = await self.chain.wait_any_receipt(hashes, self.receipt_timeout)
        except ReceiptTimeout:
            logger.warning("settlement transaction %s still pending", hashes[-1])
            return None
        return await self.record_receipt(batch.id, receipt) or []

    async def broadcast(self, batch_id: int, tx_hash: str, raw_tx: bytes) -> RpcError | None:
        """Broadcast a journaled candidate and note the attempt; the node's refusal, if any."""
        refused: RpcError | None = None
        async with self.lease.broadcasting() as conn:
            try:
                await self.chain.send_raw(raw_tx)
            except RpcError as exc:  # the chain decides later: a receipt, or the nonce moving on
                refused = exc
            await journal.mark_sent(conn, batch_id, tx_hash, at=self.clock(), accepted=refused is None)
        return refused

    async def _replace(self, batch: OpenBatch) -> str | None:
        """Journal, then broadcast, a re-priced copy of the newest candidate; its hash, or None."""
        previous = batch.latest
        cap = self.replacement.cap_for(e.trigger for e in batch.entries)
        suggested = self.chain.policy.clamp_gas_price(await self.chain.gas_price())
        price = self.replacement.price(previous.gas_price, suggested, cap)
        waited = self.clock() - (previous.broadcast_at or 0.0)
        if price is None:
            if batch.id not in self._capped:
                self._capped.add(batch.id)
                self.metrics.alerts.labels("gas_price_cap").inc()
                logger.error(
                    "settlement transaction %s (nonce %d) pending for %.0f s at %d neuron/gas; "
                    "a replacement would exceed the gas price cap %s, so it waits",
                    previous.tx_hash,
                    batch.tx_nonce,
                    waited,
                    previous.gas_price,
                    cap,
                )
            return None
        signed = self.wallet.reprice(previous.raw_tx, price)
        async with self.lease.fenced() as conn:
            journaled = await journal.journal_replacement(
                conn,
                batch.id,
                replaces=previous.tx_hash,
                tx_hash=signed.tx_hash,
                raw_tx=signed.raw,
                gas_price=price,
            )
        if not journaled:  # closed or replaced by another process meanwhile
            return None
        self._crash("before_replace")
        refused = await self.broadcast(batch.id, signed.tx_hash, signed.raw)
        self.metrics.replacements.labels("refused" if refused else "sent").inc()
        logger.warning(
            "settlement transaction %s (nonce %d) not mined after %.0f s; replaced by %s "
            "at %d neuron/gas (was %d)%s",
            previous.tx_hash,
            batch.tx_nonce,
            waited,
            signed.tx_hash,
            price,
            previous.gas_price,
            f"; the node refused it: {refused}" if refused else "",
        )
        self._crash("after_replace")
        return signed.tx_hash

    async def _abandon(self, batch: OpenBatch) -> list[EntryOutcome] | None:
        users = [to_checksum_address(e.user) for e in batch.entries]
        accounts = await self.inference.get_batch_accounts_by_users(users)
        landed = [
            e.id for e, a in zip(batch.entries, accounts, strict=True) if a.exists and a.nonce >= e.nonce
        ]
        async with self.lease.fenced() as conn:
            outcomes = await journal.release_batch(
                conn,
                batch.id,
                BatchState.ABANDONED,
                error=f"sender nonce {batch.tx_nonce} was used by another transaction",
                landed_entry_ids=landed,
            )
            await _tell_replicas(conn, outcomes)
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
