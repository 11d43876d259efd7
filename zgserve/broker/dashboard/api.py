"""Read-only admin routes behind the dashboard, under the admin API's access rules.

* ``GET /v1/earnings``: settled on chain, recorded, unsettled, open debt, and the
  cumulative series of the first two over ``window`` seconds in ``bucket`` steps.
* ``GET /v1/traffic``: charged requests, tokens and fees per model over time, and
  requests, errors and latency per route since start (the ``/metrics`` registry).
* ``GET /v1/backlog``: every user with balance, fees owed, debt, spend, revoked keys
  and the next settlement deadline with its reason.
* ``GET /v1/settlement/transactions``: settlement transactions with gas and outcome.
* ``GET /v1/wallet``: the provider wallet's balance, with a warning when it pays for
  few settlement transactions more, and the chain's explorer.

Amounts are decimal strings of neuron, times ISO 8601 UTC or unix seconds where charted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from eth_utils.address import to_checksum_address
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.dashboard import queries
from zgserve.broker.dashboard.backlog import next_deadline
from zgserve.broker.dashboard.latency import route_stats
from zgserve.broker.db import repo
from zgserve.broker.routes.admin import load_users
from zgserve.broker.routes.admin_access import require_admin
from zgserve.broker.routes.params import MAX_OFFSET, query_int
from zgserve.broker.settlement import queries as settlement_queries
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.policy import UserState
from zgserve.broker.settlement.queries import ClaimableUser
from zgserve.chain.types import Account
from zgserve.common.errors import BadRequest
from zgserve.common.money import to_wire

MAX_POINTS = 1440
MAX_WINDOW_S = 30 * 86_400
# Settlement transactions the provider wallet should hold gas for before the page warns.
LOW_GAS_TRANSACTIONS = 10
BASE_SETTLEMENT_GAS = 95_000  # per transaction, besides the per-entry gas (see settlement.policy)


def _answer(body: dict[str, Any]) -> Response:
    # Admin data: never kept in a browser's or a proxy's cache.
    return JSONResponse(body, headers={"cache-control": "no-store"})


def _iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float | int):
        value = datetime.fromtimestamp(value, UTC)
    return value.isoformat()


def _window(request: Request) -> tuple[datetime, list[int], int]:
    """The charted window: its start, every bucket start in it, and the bucket size."""
    window = query_int(request, "window", 86_400, 60, MAX_WINDOW_S)
    bucket = query_int(request, "bucket", 900, 10, MAX_WINDOW_S)
    if window // bucket > MAX_POINTS:
        raise BadRequest(f"window/bucket gives more than {MAX_POINTS} points", param="bucket")
    now = int(time.time())
    first = (now - window) // bucket * bucket + bucket
    starts = list(range(first, now // bucket * bucket + 1, bucket))
    return datetime.fromtimestamp(first, UTC), starts, bucket


async def earnings(request: Request) -> Response:
    core = require_admin(request)
    since, starts, bucket = _window(request)
    async with core.db.connect() as conn:
        everything = await repo.list_requests(conn, offset=0, limit=0)
        settled = await repo.list_requests(conn, settled=True, offset=0, limit=0)
        unsettled = await repo.total_unsettled(conn)
        on_chain = await queries.settled_on_chain(conn)
        debt_users, debt_total = await settlement_queries.open_debt_total(conn)
        traffic = await queries.traffic_series(conn, since, bucket)
        paid = await queries.paid_series(conn, since, bucket)
    recorded_by: dict[int, int] = {}
    for b in traffic:
        recorded_by[b.start] = recorded_by.get(b.start, 0) + b.fee
    # Cumulative: what came before the window, then each bucket added to it.
    recorded_run = everything.fee - sum(recorded_by.values())
    paid_run = on_chain - sum(paid.values())
    recorded_series, paid_series = [], []
    for start in starts:
        recorded_run += recorded_by.get(start, 0)
        paid_run += paid.get(start, 0)
        recorded_series.append(to_wire(recorded_run))
        paid_series.append(to_wire(paid_run))
    return _answer(
        {
            "settledOnChain": to_wire(on_chain),
            "recorded": to_wire(everything.fee),
            "recordedRequests": everything.total,
            "settledRecorded": to_wire(settled.fee),
            "unsettled": to_wire(unsettled),
            "openDebt": {"users": debt_users, "total": to_wire(debt_total)},
            "series": {
                "bucketSeconds": bucket,
                "start": starts,
                "recorded": recorded_series,
                "settledOnChain": paid_series,
            },
        }
    )


async def traffic(request: Request) -> Response:
    core = require_admin(request)
    since, starts, bucket = _window(request)
    async with core.db.connect() as conn:
        rows = await queries.traffic_series(conn, since, bucket)
    index = {start: i for i, start in enumerate(starts)}
    fields = ("requests", "inputTokens", "outputTokens", "fee", "incomplete")
    models: dict[str, dict[str, list[Any]]] = {}
    for b in rows:
        series = models.setdefault(b.model, {f: [0] * len(starts) for f in fields})
        i = index.get(b.start)
        if i is None:  # a request stamped a moment in the future of this clock
            continue
        series["requests"][i] = b.requests
        series["inputTokens"][i] = b.input_tokens
        series["outputTokens"][i] = b.output_tokens
        series["fee"][i] = b.fee
        series["incomplete"][i] = b.incomplete
    for series in models.values():
        series["fee"] = [to_wire(f) for f in series["fee"]]
    return _answer(
        {
            "bucketSeconds": bucket,
            "start": starts,
            "models": models,
            "routes": [s.to_json() for s in route_stats(core.metrics.registry)],
        }
    )


def _state(
    user: str, cu: ClaimableUser | None, account: Account | None, unlocks: tuple[int, ...]
) -> UserState:
    """The user as the settlement policy sees them: unclaimed fees and debts, sub-account, refunds."""
    return UserState(
        user=user,
        unsettled=cu.unsettled if cu is not None else 0,
        oldest_unsettled_at=cu.oldest_at.timestamp() if cu is not None and cu.oldest_at else None,
        balance=account.balance if account is not None else 0,
        pending_refund=account.pending_refund if account is not None else 0,
        refund_unlocks=unlocks,
        debt=cu.debt if cu is not None else 0,
    )


async def backlog(request: Request) -> Response:
    core = require_admin(request)
    users = await load_users(core)
    async with core.db.connect() as conn:
        claimable = await settlement_queries.claimable_users(conn)
        spent = await queries.spent_by_user(conn)
    cfg = SettlementConfig.from_settings(core.settings.settlement)
    policy = cfg.policy()
    local_now = time.time()
    chain_now, lock_time = int(local_now), 0
    if core.inference is not None:
        chain_now = await core.chain.block_timestamp()
        lock_time = await core.inference.lock_time()
    items = []
    for u in users:
        a = u.account
        refunds = [] if a is None else [r for r in a.live_refunds if not r.processed]
        unlocks = tuple(r.created_at + lock_time for r in refunds)
        state = _state(u.address, claimable.get(u.address), a, unlocks)
        d = next_deadline(state, policy, chain_now, local_now)
        requests, fees = spent.get(u.address, (0, 0))
        items.append(
            {
                "user": to_checksum_address(u.address),
                "balance": None if a is None else to_wire(a.balance),
                "pendingRefund": None if a is None else to_wire(a.pending_refund),
                "unsettledFee": to_wire(u.unsettled),
                "debt": to_wire(u.debt),
                "requests": requests,
                "spent": to_wire(fees),
                "revokedKeys": 0 if a is None else bin(a.revoked_bitmap).count("1"),
                "generation": None if a is None else str(a.generation),
                "acknowledged": None if a is None else a.acknowledged,
                # Chain time, shown on the local clock like every other time here.
                "refundUnlocks": [_iso(local_now + at - chain_now) for at in sorted(unlocks)],
                "deadline": {
                    "dueNow": d.due_now,
                    "trigger": d.trigger,
                    "at": _iso(d.at),
                    "shareBps": d.share_bps,
                    "shareLimitBps": d.share_limit_bps,
                },
            }
        )
    return _answer(
        {
            "items": items,
            "settlement": {
                "enabled": cfg.enabled,
                "intervalSeconds": cfg.interval_seconds,
                "maxAgeSeconds": cfg.max_age_seconds,
                "refundMarginSeconds": cfg.refund_margin_seconds,
            },
            "lockTime": lock_time,
        }
    )


async def transactions(request: Request) -> Response:
    core = require_admin(request)
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    limit = query_int(request, "limit", 50, 1, 500)
    async with core.db.connect() as conn:
        items, total = await queries.transactions(conn, offset=offset, limit=limit)
    return _answer(
        {
            "items": [
                {
                    "txHash": t.tx_hash,
                    "state": t.state,
                    "blockNumber": t.block_number,
                    "gasUsed": t.gas_used,
                    "gasPrice": to_wire(t.gas_price),
                    "gasCost": None if t.gas_cost is None else to_wire(t.gas_cost),
                    "sends": t.sends,
                    "error": t.error,
                    "createdAt": _iso(t.created_at),
                    "entries": t.entries,
                    "partial": t.partial,
                    "failed": t.failed,
                    "paid": to_wire(t.paid),
                    "unpaid": to_wire(t.unpaid),
                }
                for t in items
            ],
            "total": total,
            "offset": offset,
            "explorerUrl": core.settings.network.explorer_url,
        }
    )


def gas_runway(balance: int, gas_price: int, cfg: SettlementConfig) -> tuple[int, int, bool]:
    """(cost of one full settlement transaction, how many the balance pays, whether that is low)."""
    per_tx = (BASE_SETTLEMENT_GAS + cfg.marginal_gas_per_entry * cfg.batch_size) * max(gas_price, 1)
    return per_tx, balance // per_tx, balance < LOW_GAS_TRANSACTIONS * per_tx


async def wallet(request: Request) -> Response:
    core = require_admin(request)
    body: dict[str, Any] = {
        "provider": to_checksum_address(core.provider_address),
        "settlementSigner": core.settlement_signer.address,
        "explorerUrl": core.settings.network.explorer_url,
        "chain": None,
    }
    if core.chain is None:
        return _answer(body)
    balance = await core.chain.balance(core.provider_address)
    gas_price = await core.chain.gas_price()
    per_tx, left, low = gas_runway(
        balance, gas_price, SettlementConfig.from_settings(core.settings.settlement)
    )
    body["chain"] = {
        "chainId": core.chain.config.chain_id,
        "blockNumber": await core.chain.block_number(),
        "gasPrice": to_wire(gas_price),
        "balance": to_wire(balance),
        "fullSettlementCost": to_wire(per_tx),
        "settlementsLeft": left,
        "lowGas": low,
    }
    return _answer(body)


def api_routes() -> list[Route]:
    return [
        Route("/v1/earnings", earnings, methods=["GET"]),
        Route("/v1/traffic", traffic, methods=["GET"]),
        Route("/v1/backlog", backlog, methods=["GET"]),
        Route("/v1/settlement/transactions", transactions, methods=["GET"]),
        Route("/v1/wallet", wallet, methods=["GET"]),
    ]
