"""The settlement engine: bounded rounds of build, preview, sign, journal, send, record.

One round (:meth:`SettlementEngine.run_round`), run only by the lease holder:

1. **Reconcile** journaled batches whose outcome is not recorded (``recovery``).
   While one is still pending, no new batch is started; one pending for
   ``replaceAfterSeconds`` is replaced by the same call with the same sender
   nonce at a higher gas price (``replacement``), journaled before it is sent.
2. **Look**: unsettled, unclaimed fees and open debts per user (database), their
   sub-accounts (``getBatchAccountsByUsers``), the chain clock and gas price.
3. **Plan** with the policy: batches of at most 50 distinct users.
4. For each batch (at most ``maxBatchesPerRound``): **build** receipts, Merkle
   root, nonce and EIP-712 signature per user; **preview** with
   ``previewSettlementResults`` and drop entries that would fail (bad signer or
   signature: alert and keep the fees; stale nonce: resync next round; PARTIAL
   entries are sent: they collect what the balance holds and open a debt);
   **sign** the transaction; **journal** everything, raw transaction included;
   **send**; await the **receipt**; **record** outcomes from the
   ``TEESettlementResult`` events.

**Fencing.** Only the lease holder writes the journal and broadcasts: each such
write runs the lease's fence (holder and epoch unchanged) in its own transaction,
so a settler that was overtaken mid-round (paused past its expiry while another
replica took over) gets :class:`LeaseLost`, sends nothing, and ends the round.
Whenever this engine (re)takes the lease it drops the wallet's local nonce, so
the next transaction uses the node's pending count: a replica sharing the
provider key may have sent since.

The loop (:meth:`start`) runs a round every ``intervalSeconds``; after a failed
round it backs off exponentially up to ``backoffMaxSeconds``, and it never runs
two rounds closer than ``minRoundGapSeconds``. :meth:`settle` is the manual
trigger behind ``POST /v1/settle``; :meth:`stop` optionally settles everything
before releasing the lease.

**Test hook.** The environment variable ``ZGSERVE_SETTLEMENT_CRASH_AT`` set to
``before_send``, ``after_send`` or ``after_receipt`` makes the process kill itself
with SIGKILL at that point of the first batch it sends (after the journal commit,
after the broadcast, after the receipt but before the outcome commit);
``before_replace`` and ``after_replace`` do the same at the first replacement
(after its journal commit, after its broadcast). The fault injection tests use
it; it is read once, when the engine is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.settlement import journal, queries
from zgserve.broker.settlement.builder import SigningContext, next_nonce, receipts_for, sign_entry
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.journal import ClaimConflict, EntryOutcome, PreparedEntry
from zgserve.broker.settlement.lease import Lease, LeaseLost
from zgserve.broker.settlement.metrics import SettlementMetrics
from zgserve.broker.settlement.policy import (
    HARD_DEADLINES,
    DeadlinePolicy,
    Decision,
    Policy,
    Trigger,
    UserState,
)
from zgserve.broker.settlement.queries import ClaimableUser
from zgserve.broker.settlement.recovery import BatchCloser, OnSettled
from zgserve.chain.client import ChainClient
from zgserve.chain.errors import ReceiptTimeout
from zgserve.chain.inference import InferenceServing
from zgserve.chain.types import Account, SettlementStatus, TEESettlementData
from zgserve.common.money import to_wire

logger = logging.getLogger(__name__)

CRASH_ENV = "ZGSERVE_SETTLEMENT_CRASH_AT"
CRASH_POINTS = ("before_send", "after_send", "after_receipt", "before_replace", "after_replace")


@dataclass(slots=True)
class RoundReport:
    """What one round did; ``to_json`` is what ``POST /v1/settle`` answers."""

    leader: bool = True
    reconciled: list[EntryOutcome] = field(default_factory=list)
    outcomes: list[EntryOutcome] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    pending_batches: int = 0
    more: bool = False  # the plan had more batches than one round may send

    def to_json(self) -> dict[str, Any]:
        def entry(o: EntryOutcome) -> dict[str, Any]:
            return {
                "user": to_checksum_address(o.user),
                "nonce": str(o.nonce),
                "status": o.status,
                "totalFee": to_wire(o.total_fee),
                "paid": to_wire(o.paid),
                "unpaid": to_wire(o.unpaid),
            }

        return {
            "leader": self.leader,
            "transactions": self.transactions,
            "settlements": [entry(o) for o in self.outcomes],
            "reconciled": [entry(o) for o in self.reconciled],
            "skipped": {to_checksum_address(u): why for u, why in self.skipped.items()},
            "pendingTransactions": self.pending_batches,
            "settled": to_wire(sum(o.paid for o in (*self.outcomes, *self.reconciled))),
        }


class SettlementEngine:
    """Settles recorded fees on-chain exactly once (see the module doc)."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        chain: ChainClient,
        inference: InferenceServing,
        signing: SigningContext,
        config: SettlementConfig,
        metrics: SettlementMetrics | None = None,
        policy: Policy | None = None,
        on_settled: OnSettled | None = None,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.chain = chain
        self.inference = inference
        self.wallet = inference.sender
        self.signing = signing
        self.config = config
        self.metrics = metrics or SettlementMetrics()
        self.policy: Policy = policy or DeadlinePolicy(config.policy())
        self.clock = clock
        self.lease = lease or Lease(db, f"settler:{self.wallet.address.lower()}", ttl=config.lease_seconds)
        crash = os.environ.get(CRASH_ENV, "").strip()
        if crash and crash not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV} must be one of {', '.join(CRASH_POINTS)}")
        self._crash_at = crash or None
        self.closer = BatchCloser(
            db=db,
            chain=chain,
            inference=inference,
            wallet=self.wallet,
            lease=self.lease,
            metrics=self.metrics,
            on_settled=on_settled,
            receipt_timeout=config.receipt_timeout_seconds,
            replacement=config.replacement(chain.policy.gas_price_cap),
            clock=clock,
            crash=self._crash,
        )
        self._round_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock_time: int | None = None
        self._cooldown: dict[str, float] = {}  # user -> local time before which they are skipped
        self._debt_claims: dict[str, float] = {}  # user -> local time of the last debt claim
        self._nonce_epoch: int | None = None  # the lease epoch the wallet's nonce was read under

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background loop (idempotent; a no-op unless ``settlement.enabled``)."""
        await journal.ensure_schema(self.db)
        if not self.config.enabled:
            logger.info("settlement loop disabled (settlement.enabled is false); POST /v1/settle still works")
            return
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name="settlement-loop")

    async def stop(self, *, settle: bool | None = None, grace: float = 60.0) -> None:
        """Stop the loop; settle everything first when ``settle`` (default: ``settleOnShutdown``)."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if settle if settle is not None else self.config.settle_on_shutdown:
            try:
                await asyncio.wait_for(self.run_round(force=Trigger.SHUTDOWN), grace)
            except Exception as exc:  # stopping must not fail; the journal keeps everything
                logger.error("settlement at shutdown failed: %s", exc)
        with contextlib.suppress(Exception):
            await self.lease.release()
        self.metrics.lease_held.set(0)

    async def settle(self, users: Sequence[str] | None = None) -> dict[str, Any]:
        """Settle ``users`` (every user with fees when None) now, deadlines or not."""
        report = await self.run_round(force=Trigger.MANUAL, users=users)
        return report.to_json()

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            delay = self.config.interval_seconds
            try:
                report = await self.run_round()
                failures = 0
                self.metrics.rounds.labels("ok" if report.leader else "follower").inc()
                if report.more:
                    delay = self.config.min_round_gap_seconds
            except Exception as exc:
                failures += 1
                delay = self.config.backoff(failures)
                self.metrics.rounds.labels("error").inc()
                logger.warning(
                    "settlement round failed (%d in a row; next try in %.1f s): %s: %s",
                    failures,
                    delay,
                    type(exc).__name__,
                    exc,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(delay, self.config.min_round_gap_seconds))

    # -- one round --------------------------------------------------------------------------

    async def run_round(
        self, *, force: Trigger | None = None, users: Sequence[str] | None = None
    ) -> RoundReport:
        """One bounded round (module doc). Raises on chain or database failure."""
        async with self._round_lock:
            report = RoundReport()
            if not await self._hold_lease():
                report.leader = False
                return report
            try:
                report.reconciled, report.pending_batches = await self.closer.reconcile_all()
                if report.pending_batches:
                    return report
                claimable = await self._claimable(users)
                if claimable:
                    await self._settle_claimable(claimable, force, report)
            except LeaseLost as exc:
                # Overtaken mid-round: what is journaled is the new holder's to send and record.
                logger.warning("settlement round aborted, nothing more sent: %s", exc)
                self.metrics.lease_held.set(0)
                report.leader = False
                return report
            await self._refresh_gauges()
            return report

    async def _hold_lease(self) -> bool:
        """Take or renew the lease; on a new epoch, forget the wallet's local nonce."""
        held = await self.lease.acquire()
        self.metrics.lease_held.set(1 if held else 0)
        if held and self.lease.epoch != self._nonce_epoch:
            # Another replica with the same key may have sent while it held the lease: our local
            # sequence would then sign a used nonce ("nonce too low"). Re-read the pending count.
            await self.wallet.reset_nonce()
            self._nonce_epoch = self.lease.epoch
        return held

    async def _claimable(self, users: Sequence[str] | None) -> dict[str, ClaimableUser]:
        async with self.db.connect() as conn:
            found = await queries.claimable_users(conn, users)
        now = self.clock()
        return {
            u: c
            for u, c in found.items()
            if (c.unsettled > 0 or c.debts) and self._cooldown.get(u, 0.0) <= now
        }

    async def _settle_claimable(
        self, claimable: dict[str, ClaimableUser], force: Trigger | None, report: RoundReport
    ) -> None:
        users = sorted(claimable)
        accounts_list = await self.inference.get_batch_accounts_by_users(
            [to_checksum_address(u) for u in users]
        )
        accounts = dict(zip(users, accounts_list, strict=True))
        chain_now = await self.chain.block_timestamp()
        network_price = await self.chain.gas_price()
        gas_price = self.chain.policy.clamp_gas_price(network_price)  # what the wallet will pay
        lock_time = await self._get_lock_time()
        states: list[UserState] = []
        for u in users:
            acct = accounts[u]
            if not acct.exists:
                # Deleted (fully refunded) or never funded: nothing can be collected now.
                report.skipped[u] = "no sub-account on chain"
                self._cooldown[u] = self.clock() + self.config.failure_cooldown_seconds
                self.metrics.alerts.labels("no_account").inc()
                logger.error(
                    "%s has %d neuron unsettled but no sub-account; fees kept",
                    to_checksum_address(u),
                    claimable[u].unsettled,
                )
                continue
            states.append(self._state(claimable[u], acct, lock_time))
        plan = self.policy.plan(
            states, chain_now=chain_now, local_now=self.clock(), gas_price=gas_price, force=force
        )
        cap = self.config.gas_price_cap
        for i, batch in enumerate(plan):
            if i == self.config.max_batches_per_round:
                report.more = True
                break
            if i > 0 and not await self._hold_lease():  # renewed per batch: rounds can be long
                report.more = True
                break
            if (
                cap is not None
                and network_price > cap
                and not any(d.trigger in HARD_DEADLINES for d in batch)
            ):
                for d in batch:
                    report.skipped[d.user] = f"gas price {network_price} above cap {cap}"
                continue
            if not await self._settle_batch(batch, accounts, claimable, report):
                break  # a transaction is still pending: nothing new until it is mined

    def _state(self, c: ClaimableUser, acct: Account, lock_time: int) -> UserState:
        # A debt is claimed only with a balance to pay it from (else it would burn a nonce and gas).
        return UserState(
            user=c.user,
            unsettled=c.unsettled,
            oldest_unsettled_at=c.oldest_at.timestamp() if c.oldest_at else None,
            balance=acct.balance,
            pending_refund=acct.pending_refund,
            refund_unlocks=tuple(r.created_at + lock_time for r in acct.live_refunds),
            debt=c.debt if acct.balance > 0 else 0,
            last_debt_claim_at=self._debt_claims.get(c.user),
        )

    async def _get_lock_time(self) -> int:
        if self._lock_time is None:
            self._lock_time = await self.inference.lock_time()
        return self._lock_time

    # -- one batch --------------------------------------------------------------------------

    async def _build(
        self, batch: Sequence[Decision], accounts: dict[str, Account], claimable: dict[str, ClaimableUser]
    ) -> list[tuple[PreparedEntry, TEESettlementData]]:
        built: list[tuple[PreparedEntry, TEESettlementData]] = []
        async with self.db.connect() as conn:
            last = await queries.last_nonces(conn, [d.user for d in batch])
            for d in batch:
                acct = accounts[d.user]
                rows = await queries.unsettled_rows(conn, d.user)
                debts = claimable[d.user].debts if acct.balance > 0 else []
                receipts, row_ids, debt_ids = receipts_for(d.user, rows, debts)
                if not receipts or sum(r.fee for r in receipts) == 0:
                    continue
                built.append(
                    sign_entry(
                        self.signing,
                        user=d.user,
                        nonce=next_nonce(acct.nonce, last.get(d.user)),
                        trigger=d.trigger.value,
                        receipts=receipts,
                        request_row_ids=row_ids,
                        debt_ids=debt_ids,
                    )
                )
                if debt_ids:
                    self._debt_claims[d.user] = self.clock()
        return built

    async def _preview(
        self, built: list[tuple[PreparedEntry, TEESettlementData]], report: RoundReport
    ) -> list[tuple[PreparedEntry, TEESettlementData]]:
        preview = await self.inference.preview_settlement_results([data for _, data in built])
        failed = {user.lower(): reason for user, reason in preview.failed}
        kept = []
        for entry, data in built:
            reason = failed.get(entry.user)
            if reason is None:
                kept.append((entry, data))
                continue
            report.skipped[entry.user] = f"preview: {reason.name}"
            if reason is SettlementStatus.INVALID_NONCE:
                logger.warning(
                    "preview: nonce %d of %s is stale; resyncing next round", entry.nonce, entry.user
                )
                continue
            self._cooldown[entry.user] = self.clock() + self.config.failure_cooldown_seconds
            self.metrics.alerts.labels(reason.name.lower()).inc()
            logger.error(
                "preview: settlement of %s would fail with %s; fees kept, retry in %.0f s",
                to_checksum_address(entry.user),
                reason.name,
                self.config.failure_cooldown_seconds,
            )
        return kept

    async def _settle_batch(
        self,
        batch: Sequence[Decision],
        accounts: dict[str, Account],
        claimable: dict[str, ClaimableUser],
        report: RoundReport,
    ) -> bool:
        """Settle one planned batch; False when its transaction is sent but not yet mined."""
        built = await self._build(batch, accounts, claimable)
        # One global order (by user) for every settler: two racing on the same users then take
        # the journal's unique keys in the same order and one of them gets a clean conflict,
        # where opposite orders would deadlock in PostgreSQL.
        built.sort(key=lambda item: item[0].user.lower())
        if built:
            built = await self._preview(built, report)
        if not built:
            return True
        signed = await self.wallet.sign_transaction(self.inference.settle_call([data for _, data in built]))
        try:
            async with self.lease.fenced() as conn:
                batch_id, _ = await journal.journal_batch(
                    conn,
                    provider=self.wallet.address,
                    tx_hash=signed.tx_hash,
                    tx_nonce=signed.nonce,
                    raw_tx=signed.raw,
                    gas_limit=signed.gas,
                    gas_price=signed.gas_price,
                    holder=self.lease.holder,
                    entries=[entry for entry, _ in built],
                )
        except LeaseLost:
            # Not journaled, so never to be sent. Only forget the nonce locally: filling the gap
            # (release_nonce) would send with the key, which is the new holder's alone now.
            await self.wallet.reset_nonce()
            raise
        except (ClaimConflict, IntegrityError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError) and not _lost_race(exc):
                raise
            # Another settler claimed some of these fees first; nothing was sent.
            await self.wallet.release_nonce(signed)
            reason = str(exc).splitlines()[0][:300]
            logger.warning("settlement batch not journaled (another settler claimed first): %s", reason)
            return True
        self._crash("before_send")
        async with self.lease.broadcasting() as conn:
            # A refusal fails the round; reconciling sends it again.
            await self.chain.send_raw(signed.raw)
            await journal.mark_sent(conn, batch_id, signed.tx_hash, at=self.clock())
        report.transactions.append(signed.tx_hash)
        self._crash("after_send")
        try:
            receipt = await self.chain.wait_receipt(
                signed.tx_hash, self.config.receipt_timeout_seconds, check=False
            )
        except ReceiptTimeout:
            report.pending_batches += 1
            logger.warning("settlement transaction %s not mined yet; reconciled next round", signed.tx_hash)
            return False
        self._crash("after_receipt")
        report.outcomes.extend(await self.closer.record_receipt(batch_id, receipt) or [])
        return True

    def _crash(self, point: str) -> None:
        if self._crash_at == point:
            logger.critical("test hook %s=%s: killing this process", CRASH_ENV, point)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    async def _refresh_gauges(self) -> None:
        async with self.db.connect() as conn:
            claimable = await queries.claimable_users(conn)
            debt_users, debt_total = await queries.open_debt_total(conn)
        self.metrics.observe_backlog(
            ((c.unsettled, c.oldest_at) for c in claimable.values()), datetime.now(UTC)
        )
        self.metrics.debt.set(debt_total)
        self.metrics.debt_users.set(debt_users)


# PostgreSQL's deadlock and serialization failures: a race with another settler, not a fault.
_RACE_SQLSTATES = frozenset({"40P01", "40001"})


def _lost_race(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RACE_SQLSTATES or "deadlock detected" in str(exc.orig)
