"""When to settle: pure functions over one user's state, no I/O.

A settlement transaction costs ~95k gas plus ~58k per user it carries (spec §3),
so the cheapest policy settles rarely and in full batches. Fees are lost only
when they escape, and they can escape in exactly two ways, which become
*deadlines* that override gas thrift:

* **refund unlock** -- a pending refund matures at ``createdAt + lockTime``;
  after that the user can withdraw what our fees have not yet consumed. A user
  with unsettled fees whose earliest refund unlocks within ``refund_margin_s``
  (chain time) is settled now.
* **balance exhaustion** -- a fee above the sub-account balance becomes a
  PARTIAL; unsettled fees reaching ``deposit_share_bps`` of the balance are
  settled so exposure stays bounded and the balance guard keeps admitting the
  user's next requests. The whole balance counts here, pending refunds included:
  until a refund unlocks, settlement takes fees out of it (newest refund first),
  and its unlock is the deadline above.

Further deadlines: fees older than ``max_age_s``; a debt (the unpaid remainder
of a PARTIAL) once the account has a balance again; an operator's
``POST /v1/settle``; shutdown when configured.

Everyone else waits and accumulates. When a transaction is being sent anyway,
spare slots (up to ``batch_size`` = 50 per transaction) are filled with the
largest waiting users whose fees are worth at least ``min_fee_gas_multiple``
times the marginal gas of one more entry; users below that are left alone
until a deadline forces them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

MAX_BATCH = 50  # contract limit: TooManySettlements(n, 50)


class Trigger(StrEnum):
    """Why a user is in a batch; ordered roughly by urgency."""

    MANUAL = "manual"
    SHUTDOWN = "shutdown"
    DEBT = "debt"
    REFUND_UNLOCK = "refund_unlock"
    DEPOSIT_SHARE = "deposit_share"
    MAX_AGE = "max_age"
    INTERVAL = "interval"  # the naive every-interval policy (benchmark baseline)
    PIGGYBACK = "piggyback"  # not due, but worth a spare slot in a batch that is sent anyway


# Sent even when gas is above the cap: waiting would lose the fees or ignore the operator.
HARD_DEADLINES = frozenset({Trigger.REFUND_UNLOCK, Trigger.MANUAL, Trigger.SHUTDOWN})


@dataclass(frozen=True)
class PolicyConfig:
    """Tunable thresholds; defaults suit a 1 h - 7 d contract lockTime."""

    deposit_share_bps: int = 5_000  # settle once unsettled >= 50 % of the sub-account balance
    refund_margin_s: int = 900  # settle when a refund unlocks within 15 min (chain time)
    max_age_s: int = 86_400  # settle fees older than a day whatever their size
    min_fee_gas_multiple: int = 2  # a piggyback entry must earn >= 2x its marginal gas
    marginal_gas_per_entry: int = 60_000  # measured ~58k for a repeat settlement
    batch_size: int = MAX_BATCH
    debt_retry_s: int = 300  # at most one debt claim per user per 5 min

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {self.batch_size}")
        if not 0 < self.deposit_share_bps <= 10_000:
            raise ValueError("deposit_share_bps must be in 1..10000")
        for name in ("refund_margin_s", "max_age_s", "min_fee_gas_multiple", "debt_retry_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class UserState:
    """One user as the policy sees it (amounts in neuron, times in unix seconds)."""

    user: str
    unsettled: int  # recorded, not yet claimed by any settlement
    oldest_unsettled_at: float | None  # local clock of the oldest such fee
    balance: int  # sub-account balance on chain
    pending_refund: int
    refund_unlocks: tuple[int, ...] = ()  # createdAt + lockTime of each live refund (chain time)
    debt: int = 0  # unpaid remainder of PARTIAL settlements
    last_debt_claim_at: float | None = None

    @property
    def claimable(self) -> int:
        return self.unsettled + self.debt


@dataclass(frozen=True)
class Decision:
    user: str
    trigger: Trigger
    urgency: float  # lower is more urgent; used to order due users
    amount: int


def due_trigger(
    s: UserState, cfg: PolicyConfig, chain_now: int, local_now: float
) -> tuple[Trigger, float] | None:
    """The deadline that forces ``s`` to be settled now, with its urgency, or None."""
    if s.debt > 0 and s.balance > 0:
        recent = s.last_debt_claim_at is not None and local_now - s.last_debt_claim_at < cfg.debt_retry_s
        if not recent:
            return Trigger.DEBT, 0.0
    if s.unsettled <= 0:
        return None
    if s.refund_unlocks:
        first = min(s.refund_unlocks)
        if first - chain_now <= cfg.refund_margin_s:
            return Trigger.REFUND_UNLOCK, float(first - chain_now)
    if s.unsettled * 10_000 >= cfg.deposit_share_bps * s.balance:
        return Trigger.DEPOSIT_SHARE, float(cfg.refund_margin_s)
    if s.oldest_unsettled_at is not None:
        age = local_now - s.oldest_unsettled_at
        if age >= cfg.max_age_s:
            return Trigger.MAX_AGE, float(cfg.refund_margin_s + cfg.max_age_s - age)
    return None


def worth_piggyback(s: UserState, cfg: PolicyConfig, gas_price: int) -> bool:
    """True when ``s``'s fees pay for the extra gas of one more entry, with margin."""
    return s.claimable >= cfg.min_fee_gas_multiple * cfg.marginal_gas_per_entry * gas_price


class Policy(Protocol):
    """Turns user states into batches (each at most ``batch_size`` users, no user twice)."""

    def plan(
        self,
        states: Sequence[UserState],
        *,
        chain_now: int,
        local_now: float,
        gas_price: int,
        force: Trigger | None = None,
    ) -> list[list[Decision]]: ...


@dataclass(frozen=True)
class DeadlinePolicy:
    """The default: settle on deadlines, fill spare slots with worthwhile piggybacks."""

    config: PolicyConfig = PolicyConfig()

    def plan(
        self,
        states: Sequence[UserState],
        *,
        chain_now: int,
        local_now: float,
        gas_price: int,
        force: Trigger | None = None,
    ) -> list[list[Decision]]:
        cfg = self.config
        due: list[Decision] = []
        spare: list[Decision] = []
        for s in _unique(states):
            if s.claimable <= 0:
                continue
            if force is not None:
                if s.unsettled <= 0 and s.balance <= 0:
                    continue  # a debt claim against an empty account would only burn gas
                due.append(Decision(s.user, force, 0.0, s.claimable))
                continue
            hit = due_trigger(s, cfg, chain_now, local_now)
            if hit is not None:
                due.append(Decision(s.user, hit[0], hit[1], s.claimable))
            elif s.unsettled > 0 and worth_piggyback(s, cfg, gas_price):
                spare.append(Decision(s.user, Trigger.PIGGYBACK, float("inf"), s.unsettled))
        if not due:
            return []
        due.sort(key=lambda d: (d.urgency, -d.amount))
        spare.sort(key=lambda d: -d.amount)
        batches = chunk(due, cfg.batch_size)
        room = cfg.batch_size - len(batches[-1])
        batches[-1].extend(spare[:room])
        return batches


@dataclass(frozen=True)
class IntervalPolicy:
    """The naive baseline: every user with anything unsettled, every time it is asked."""

    batch_size: int = MAX_BATCH

    def plan(
        self,
        states: Sequence[UserState],
        *,
        chain_now: int,
        local_now: float,
        gas_price: int,
        force: Trigger | None = None,
    ) -> list[list[Decision]]:
        picked = [Decision(s.user, force or Trigger.INTERVAL, 0.0, s.claimable) for s in _unique(states)]
        return chunk([d for d in picked if d.amount > 0], self.batch_size)


def chunk(items: Sequence[Decision], size: int) -> list[list[Decision]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _unique(states: Iterable[UserState]) -> list[UserState]:
    """Drop repeated users: ``previewSettlementResults`` does not simulate repeats."""
    seen: set[str] = set()
    out: list[UserState] = []
    for s in states:
        key = s.user.lower()
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
