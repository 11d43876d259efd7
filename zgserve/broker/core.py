"""The broker's parts, wired once at start-up, and the seam the settlement engine plugs into.

:class:`BrokerCore` holds everything built in the app's lifespan. The settlement
engine (``zgserve.broker.settlement``) receives it from its factory and uses
``core.db`` with :mod:`zgserve.broker.db.repo`, ``core.inference`` for the
contract, ``core.settlement_signer`` to sign entries, and calls
:meth:`BrokerCore.on_settled` after it changed what a user owes so that the
balance guard and account cache re-read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from zgserve.broker.accounts import AccountCache
from zgserve.broker.auth import Authenticator
from zgserve.broker.billing import BalanceGuard, Prices
from zgserve.broker.catalog import Catalog
from zgserve.broker.db import repo
from zgserve.broker.limits import Limiter
from zgserve.broker.metrics import BrokerMetrics
from zgserve.broker.records import RecordWriter
from zgserve.broker.settings import BrokerSettings
from zgserve.broker.shared_admission import SharedBalanceGuard
from zgserve.common.http1 import Http1Pool
from zgserve.common.money import to_wire
from zgserve.common.signing import Signer

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ServiceState:
    """The service as currently offered; prices may change at run time through the admin API."""

    url: str
    model: str
    service_type: str
    input_price: int
    output_price: int
    tee_address: str | None = None

    @property
    def prices(self) -> Prices:
        return Prices(self.input_price, self.output_price)


class SettlementEngine(Protocol):
    """What the broker expects of a settlement engine."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def settle(self, users: Sequence[str] | None = None) -> dict[str, Any]:
        """Settle ``users`` (all with unsettled fees when None) now; a JSON-able report."""
        ...


SettlementFactory = Callable[["BrokerCore"], SettlementEngine]


@dataclass(slots=True)
class BrokerCore:
    settings: BrokerSettings
    provider_address: str
    db: AsyncEngine
    http: aiohttp.ClientSession  # everything else sent to the service
    accounts: AccountCache
    auth: Authenticator
    guard: BalanceGuard | SharedBalanceGuard  # the shared one when replicas share PostgreSQL
    writer: RecordWriter
    metrics: BrokerMetrics
    service: ServiceState
    settlement_signer: Signer
    upstream: Http1Pool  # keep-alive connections to the service for completions (the hot path)
    catalog: Catalog  # the models sold, each with its prices; a request's ``model`` picks one
    # Pools to the models that have a verifiable service of their own, by its OpenAI base URL.
    model_upstreams: dict[str, Http1Pool] = field(default_factory=dict)
    chain: Any = None  # zgserve.chain client (None when running without a chain, e.g. unit tests)
    inference: Any = None  # InferenceServing wrapper
    quote: dict[str, Any] = field(default_factory=dict)
    settlement: SettlementEngine | None = None
    limits: Limiter | None = None  # None: no limit configured, nothing checked on the hot path

    def on_settled(self, users: Sequence[str] | None = None, *, amount: int | None = None) -> None:
        """Call after settling (or changing the debt of) ``users``: caches re-read chain and database.

        ``amount`` is the total newly settled, for the unsettled gauge.
        """
        for user in users if users is not None else [None]:
            key = user.lower() if user else None
            self.accounts.invalidate(key)
            self.guard.invalidate(key)
        if amount:
            self.metrics.unsettled.dec(amount)


class UnsettledReport:
    """The stand-in settlement engine: reports what is unsettled, settles nothing."""

    def __init__(self, core: BrokerCore) -> None:
        self._core = core

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def settle(self, users: Sequence[str] | None = None) -> dict[str, Any]:
        async with self._core.db.connect() as conn:
            owed = await repo.unsettled_by_user(conn)
        wanted = {u.lower() for u in users} if users else None
        rows = {u: fee for u, fee in owed.items() if wanted is None or u in wanted}
        return {
            "settled": False,
            "reason": "no settlement engine is configured; nothing was sent",
            "unsettled": {u: to_wire(fee) for u, fee in sorted(rows.items())},
            "total": to_wire(sum(rows.values())),
        }
