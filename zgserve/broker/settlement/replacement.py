"""Replacing a stuck settlement transaction: the same call and sender nonce, a higher gas price.

A batch's transaction can stay in the pool for good, typically when it was priced below
what the network asks now. While it is pending no new batch starts, so every fee waits
behind it, and users' refunds keep unlocking. When the newest transaction of a journaled
batch is still not mined ``replaceAfterSeconds`` after it was first broadcast, the batch
gets a *replacement*: the same signed transaction (:meth:`~zgserve.chain.wallet.Wallet.reprice`:
same sender nonce, gas limit, target and calldata, hence the same EIP-712 signed entries
with the same settlement nonces) at the gas price

    max(the network's price now, the previous price x (1 + replaceBumpBps / 10000))

The bump (at least 12.5 %) clears the ~10 % increase nodes require to replace a pooled
transaction. All candidates of a batch share one sender nonce, so at most one of them is
ever mined; whichever it is settles the batch, and the entries' settlement nonces would
refuse a second settlement anyway.

**Caps.** A replacement never costs more per gas than the batch's cap:

* ``gasPriceCap``; for a batch carrying a hard deadline (refund unlock, manual, shutdown)
  ``deadlineGasPriceCap`` instead when it is set, since losing the fees to an unlocked
  refund costs more than gas;
* and in every case the chain client's ``TxPolicy.gas_price_cap``.

A bump that the cap cannot accommodate is not sent: the newest candidate is re-broadcast
unchanged and the operator is alerted (``zgsettle_alerts{kind="gas_price_cap"}`` and one
log line per batch). Without any cap (the default), a batch that nothing mines goes up by
one bump per ``replaceAfterSeconds``; set ``gasPriceCap`` in production.

This module is the pure part (when, and at what price); :mod:`.recovery` journals each
candidate before broadcasting it and reconciles every candidate of a batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from zgserve.broker.settlement.policy import HARD_DEADLINES

# Nodes (geth and its descendants) refuse a replacement below +10 %; 12.5 % leaves room
# for rounding and for nodes that ask slightly more.
MIN_BUMP_BPS = 1_250


@dataclass(frozen=True, slots=True)
class ReplacementPolicy:
    """When a pending candidate is replaced and what the replacement pays (see the module doc)."""

    after_s: float
    bump_bps: int = MIN_BUMP_BPS
    cap: int | None = None  # settlement.gasPriceCap
    deadline_cap: int | None = None  # settlement.deadlineGasPriceCap
    chain_cap: int | None = None  # the chain client's TxPolicy.gas_price_cap

    def __post_init__(self) -> None:
        if self.after_s <= 0:
            raise ValueError("after_s must be positive")
        if self.bump_bps < MIN_BUMP_BPS:
            raise ValueError(f"bump_bps must be at least {MIN_BUMP_BPS}")

    def due(self, broadcast_at: float | None, now: float) -> bool:
        """Whether a candidate first broadcast at ``broadcast_at`` (unix s) has waited long enough.

        A candidate never broadcast (``None``, e.g. journaled just before a crash) is
        broadcast first, not replaced.
        """
        return broadcast_at is not None and now - broadcast_at >= self.after_s

    def cap_for(self, triggers: Iterable[str]) -> int | None:
        """The most a replacement of a batch whose entries have these triggers may pay per gas."""
        hard = any(t in HARD_DEADLINES for t in triggers)
        own = self.deadline_cap if hard and self.deadline_cap is not None else self.cap
        caps = [c for c in (own, self.chain_cap) if c is not None]
        return min(caps) if caps else None

    def price(self, previous: int, suggested: int, cap: int | None) -> int | None:
        """The replacement's gas price, or None when ``cap`` leaves no room for the bump.

        ``suggested`` is what a new transaction would pay now; ``previous`` what the
        candidate being replaced pays.
        """
        minimum = max(previous + 1, -(-previous * (10_000 + self.bump_bps) // 10_000))
        wanted = max(suggested, minimum)
        if cap is None or wanted <= cap:
            return wanted
        return cap if minimum <= cap else None
