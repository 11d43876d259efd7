"""Prices, admission estimates, and the balance guard.

A request is admitted only if::

    balance - pendingRefund - unsettled - reserved(in flight) - minLocked >= estimate

where ``estimate = input estimate × inputPrice + output cap × outputPrice``. The
output cap is :func:`zgserve.common.output_cap.output_cap` (every length and
choice-count field a backend honours, never above the provider's limit), and the
service enforces the same cap on the backend, so output can never exceed it. The
input estimate is the body size divided by ``inputBytesPerToken``, an upper bound
for real tokenizers with the default of 1 (every token is at least one byte, and
JSON syntax outweighs a chat template's tokens). A fee is never recorded above
its reservation. The reservation is taken in the
same event-loop step as the check, so concurrent requests of one user cannot
both pass on the same headroom; it is replaced by the real fee once the request
is recorded, or dropped if nothing is charged. A user with debt (the unpaid part
of a PARTIAL settlement) is refused until it is paid.

Scope of the guarantee: reservations are exact within one broker process. The
unsettled total and debt are re-read from the database every ``refresh``
seconds, so several processes on one database see each other's records within
that window; in-flight reservations of another process are not visible. Run one
broker process per provider key for a strict bound (the default deployment).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from zgserve.broker.errors import InsufficientBalance, OutstandingDebt
from zgserve.chain.types import Account
from zgserve.common.money import fmt_og


@dataclass(frozen=True, slots=True)
class Prices:
    """Neuron per token; snapshot taken at admission and used for the request's fee."""

    input: int
    output: int

    def fee(self, input_tokens: int, output_tokens: int) -> int:
        return input_tokens * self.input + output_tokens * self.output


def input_estimate(body: bytes, bytes_per_token: int) -> int:
    return math.ceil(len(body) / bytes_per_token)


def prompt_tokens_lower_bound(request: dict[str, Any]) -> int:
    """A low estimate of prompt tokens (text length / 4), charged only when a stream was cut
    before the service reported usage."""
    chars = 0
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    return chars // 4


UnsettledLoader = Callable[[str], Awaitable[tuple[int, int]]]
"""``user -> (unsettled fee, debt)`` from the database."""


@dataclass(slots=True)
class _UserState:
    unsettled: int = 0
    debt: int = 0
    reserved: int = 0
    loaded_at: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Reservation:
    """Headroom held for one in-flight request; settle it exactly once with ``charge`` or ``release``."""

    __slots__ = ("_done", "_state", "amount", "user")

    def __init__(self, user: str, state: _UserState, amount: int) -> None:
        self.user = user
        self.amount = amount
        self._state = state
        self._done = False

    def charge(self, fee: int) -> None:
        """The request was recorded with ``fee``: it becomes unsettled and the hold ends."""
        if self._done:
            return
        self._done = True
        self._state.reserved -= self.amount
        self._state.unsettled += fee

    def release(self) -> None:
        """Nothing was charged: drop the hold."""
        if self._done:
            return
        self._done = True
        self._state.reserved -= self.amount


class BalanceGuard:
    """Admission control per user over the chain balance, unsettled fees and in-flight holds."""

    def __init__(
        self,
        load: UnsettledLoader,
        *,
        refresh: float = 3.0,
        min_locked: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._refresh = refresh
        self._min_locked = min_locked
        self._clock = clock
        self._users: dict[str, _UserState] = {}

    async def _state(self, user: str) -> _UserState:
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _UserState()
        if self._clock() - state.loaded_at >= self._refresh:
            async with state.lock:
                if self._clock() - state.loaded_at >= self._refresh:
                    state.unsettled, state.debt = await self._load(user)
                    state.loaded_at = self._clock()
        return state

    async def reserve(self, user: str, account: Account, amount: int, *, fresh: bool = False) -> Reservation:
        """Hold ``amount`` for ``user`` or raise :class:`InsufficientBalance` / :class:`OutstandingDebt`.

        ``fresh``: ``account`` was just read from the chain (one process sees every settlement it
        makes, so this guard needs nothing more; the shared guard uses it).
        """
        state = await self._state(user)
        # From here to the increment there is no await: the check and the hold are one step.
        if state.debt > 0:
            raise OutstandingDebt(f"unpaid fees of {fmt_og(state.debt)} from an earlier settlement")
        headroom = (
            account.balance - account.pending_refund - state.unsettled - state.reserved - self._min_locked
        )
        if headroom < amount:
            raise InsufficientBalance(
                f"this request may cost up to {fmt_og(amount)}, only {fmt_og(max(headroom, 0))} is available"
                " (balance minus pending refunds, unsettled fees and requests in flight)"
            )
        state.reserved += amount
        return Reservation(user, state, amount)

    async def unsettled(self, user: str) -> int:
        """Unsettled fees of ``user`` as the guard counts them (recorded, not yet settled)."""
        return (await self._state(user)).unsettled

    def invalidate(self, user: str | None = None) -> None:
        """Re-read unsettled fees and debt from the database on next use (after a settlement)."""
        targets = self._users.values() if user is None else [s for u, s in self._users.items() if u == user]
        for state in targets:
            state.loaded_at = -math.inf
