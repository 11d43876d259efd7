"""Each user's next settlement deadline and why, as the settlement policy will see it.

Pure functions over :class:`~zgserve.broker.settlement.policy.UserState`: "due now"
is exactly :func:`~zgserve.broker.settlement.policy.due_trigger`, so the dashboard
never disagrees with the engine about who is settled next round.
"""

from __future__ import annotations

from dataclasses import dataclass

from zgserve.broker.settlement.policy import PolicyConfig, Trigger, UserState, due_trigger


@dataclass(frozen=True, slots=True)
class Deadline:
    """When ``user`` must be settled at the latest, and which rule says so."""

    due_now: bool
    trigger: str | None  # the rule that is due, or the time-based one that comes first
    at: float | None  # unix seconds (local clock) of that deadline; None: none by time
    share_bps: int | None  # unsettled fees as a share of the sub-account balance (None: no balance)
    share_limit_bps: int  # the share at which the policy settles


def next_deadline(s: UserState, cfg: PolicyConfig, chain_now: int, local_now: float) -> Deadline:
    """The deadline of ``s``: due now (by which rule), else the earliest one by time."""
    share = s.unsettled * 10_000 // s.balance if s.balance > 0 else None
    hit = due_trigger(s, cfg, chain_now, local_now)
    if hit is not None:
        return Deadline(True, hit[0].value, local_now, share, cfg.deposit_share_bps)
    candidates: list[tuple[float, Trigger]] = []
    if s.unsettled > 0:
        if s.refund_unlocks:
            # Refund unlocks are in chain time; the margin before them is when the policy acts.
            until = min(s.refund_unlocks) - cfg.refund_margin_s - chain_now
            candidates.append((local_now + until, Trigger.REFUND_UNLOCK))
        if s.oldest_unsettled_at is not None:
            candidates.append((s.oldest_unsettled_at + cfg.max_age_s, Trigger.MAX_AGE))
    if s.debt > 0 and s.balance <= 0:
        return Deadline(False, Trigger.DEBT.value, None, share, cfg.deposit_share_bps)
    if not candidates:
        return Deadline(False, None, None, share, cfg.deposit_share_bps)
    at, trigger = min(candidates)
    return Deadline(False, trigger.value, at, share, cfg.deposit_share_bps)
