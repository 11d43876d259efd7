"""The settlement policy: deadlines override gas thrift; everyone else accumulates."""

from __future__ import annotations

import pytest

from zgserve.broker.settlement.policy import (
    DeadlinePolicy,
    IntervalPolicy,
    PolicyConfig,
    Trigger,
    UserState,
    due_trigger,
)
from zgserve.common.money import OG

GWEI = 10**9
CFG = PolicyConfig()
NOW = 1_800_000_000


def user(i: int, **kw: object) -> UserState:
    base: dict[str, object] = {
        "user": f"0x{i:040x}",
        "unsettled": 10**15,
        "oldest_unsettled_at": float(NOW - 60),
        "balance": 10 * OG,
        "pending_refund": 0,
    }
    base.update(kw)
    return UserState(**base)  # type: ignore[arg-type]


def test_small_fresh_fees_wait() -> None:
    assert due_trigger(user(1), CFG, NOW, NOW) is None
    assert DeadlinePolicy().plan([user(1)], chain_now=NOW, local_now=NOW, gas_price=GWEI) == []


def test_refund_unlock_within_margin_is_due() -> None:
    far = user(1, refund_unlocks=(NOW + CFG.refund_margin_s + 1,), pending_refund=OG)
    near = user(1, refund_unlocks=(NOW + 3600, NOW + CFG.refund_margin_s), pending_refund=OG)
    assert due_trigger(far, CFG, NOW, NOW) is None
    hit = due_trigger(near, CFG, NOW, NOW)
    assert hit is not None
    assert hit[0] is Trigger.REFUND_UNLOCK
    # no fees, nothing to protect
    assert due_trigger(user(1, unsettled=0, refund_unlocks=(NOW,)), CFG, NOW, NOW) is None


def test_deposit_share_counts_the_whole_balance() -> None:
    assert due_trigger(user(1, unsettled=5 * OG), CFG, NOW, NOW) == (Trigger.DEPOSIT_SHARE, 900.0)
    assert due_trigger(user(1, unsettled=1, balance=0), CFG, NOW, NOW) is not None
    # A pending refund still pays fees until it unlocks: its own deadline decides, not the share.
    refunding = user(1, unsettled=OG, pending_refund=10 * OG, refund_unlocks=(NOW + 3600,))
    assert due_trigger(refunding, CFG, NOW, NOW) is None
    hit = due_trigger(refunding, CFG, NOW + 3600 - CFG.refund_margin_s, NOW)
    assert hit is not None
    assert hit[0] is Trigger.REFUND_UNLOCK


def test_max_age_forces_tiny_fees() -> None:
    old = user(1, unsettled=1, oldest_unsettled_at=float(NOW - CFG.max_age_s))
    hit = due_trigger(old, CFG, NOW, NOW)
    assert hit is not None
    assert hit[0] is Trigger.MAX_AGE


def test_debt_is_claimed_only_with_balance_and_not_too_often() -> None:
    assert due_trigger(user(1, unsettled=0, debt=5, balance=0), CFG, NOW, NOW) is None
    assert due_trigger(user(1, unsettled=0, debt=5), CFG, NOW, NOW) == (Trigger.DEBT, 0.0)
    recent = user(1, unsettled=0, debt=5, last_debt_claim_at=float(NOW - 10))
    assert due_trigger(recent, CFG, NOW, NOW) is None


def test_piggybacks_fill_only_a_batch_that_is_sent_anyway() -> None:
    big = [user(i, unsettled=OG // 100) for i in range(10)]  # worth their gas, not due
    tiny = [user(100 + i, unsettled=1000) for i in range(10)]
    pol = DeadlinePolicy()
    assert pol.plan(big + tiny, chain_now=NOW, local_now=NOW, gas_price=GWEI) == []
    due = user(999, unsettled=6 * OG)
    [batch] = pol.plan([*big, *tiny, due], chain_now=NOW, local_now=NOW, gas_price=GWEI)
    assert (batch[0].user, batch[0].trigger) == (due.user, Trigger.DEPOSIT_SHARE)
    assert {d.user for d in batch[1:]} == {s.user for s in big}
    assert all(d.trigger is Trigger.PIGGYBACK for d in batch[1:])


def test_batches_hold_at_most_50_and_never_a_user_twice() -> None:
    states = [user(i, unsettled=6 * OG) for i in range(120)]
    states.append(user(3, unsettled=6 * OG))  # repeated address
    batches = DeadlinePolicy().plan(states, chain_now=NOW, local_now=NOW, gas_price=GWEI)
    assert [len(b) for b in batches] == [50, 50, 20]
    users = [d.user for b in batches for d in b]
    assert len(users) == len(set(users)) == 120


def test_force_takes_everyone_with_fees() -> None:
    states = [
        user(1, unsettled=1),
        user(2, unsettled=0),
        user(3, unsettled=0, debt=7),
        user(4, unsettled=0, debt=7, balance=0),
    ]
    [batch] = DeadlinePolicy().plan(
        states, chain_now=NOW, local_now=NOW, gas_price=GWEI, force=Trigger.MANUAL
    )
    assert {(d.user, d.amount) for d in batch} == {(states[0].user, 1), (states[2].user, 7)}


def test_interval_policy_takes_everyone() -> None:
    states = [user(i, unsettled=1) for i in range(60)]
    batches = IntervalPolicy().plan(states, chain_now=NOW, local_now=NOW, gas_price=GWEI)
    assert [len(b) for b in batches] == [50, 10]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        PolicyConfig(batch_size=51)
    with pytest.raises(ValueError, match="deposit_share"):
        PolicyConfig(deposit_share_bps=0)
