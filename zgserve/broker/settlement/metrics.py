"""Prometheus metrics of the settlement engine, registered in the broker's registry.

Counters move when something happens (a transaction sent, an entry's outcome);
gauges are refreshed at the end of each round from the database (backlog by age,
debts), so they are right after a restart too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

# Upper bounds (seconds) of the backlog age buckets; the last one is open-ended.
AGE_BUCKETS = (("lt_1h", 3600.0), ("lt_6h", 21600.0), ("lt_24h", 86400.0), ("ge_24h", float("inf")))


class SettlementMetrics:
    """Transactions and their replacements, entries by status, gas, fees, backlog by age, debts, alerts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transactions = Counter(
            "zgsettle_transactions", "Settlement transactions by final state", ["state"], registry=r
        )
        self.entries = Counter("zgsettle_entries", "Settlement entries by outcome", ["status"], registry=r)
        self.gas_used = Counter("zgsettle_gas_used", "Gas used by settlement transactions", registry=r)
        self.gas_cost = Counter("zgsettle_gas_cost_neuron", "Gas paid for settlement, in neuron", registry=r)
        self.fees_settled = Counter(
            "zgsettle_fees_settled_neuron", "Fees collected on-chain, in neuron", registry=r
        )
        self.fees_unpaid = Counter(
            "zgsettle_fees_unpaid_neuron",
            "Fees a PARTIAL settlement could not collect, in neuron",
            registry=r,
        )
        self.backlog = Gauge(
            "zgsettle_backlog_neuron",
            "Unsettled, unclaimed fees by age of the oldest one",
            ["age"],
            registry=r,
        )
        self.backlog_users = Gauge("zgsettle_backlog_users", "Users with unsettled fees", registry=r)
        self.debt = Gauge("zgsettle_debt_neuron", "Open debt from PARTIAL settlements, in neuron", registry=r)
        self.debt_users = Gauge("zgsettle_debt_users", "Users with open debt", registry=r)
        self.replacements = Counter(
            "zgsettle_replacements",
            "Stuck settlement transactions replaced at a higher gas price, by the node's answer",
            ["result"],
            registry=r,
        )
        self.open_batches = Gauge(
            "zgsettle_open_batches", "Journaled transactions not yet closed", registry=r
        )
        self.alerts = Counter(
            "zgsettle_alerts",
            "Conditions that need an operator (bad signer, signature, revert, gas price cap)",
            ["kind"],
            registry=r,
        )
        self.rounds = Counter("zgsettle_rounds", "Settlement rounds by result", ["result"], registry=r)
        self.lease_held = Gauge(
            "zgsettle_lease_held", "1 while this process holds the settlement lease", registry=r
        )

    def observe_backlog(self, items: Iterable[tuple[int, datetime | None]], now: datetime) -> None:
        """Set the backlog gauges from ``(unsettled fee, oldest fee time)`` per user."""
        sums = dict.fromkeys((name for name, _ in AGE_BUCKETS), 0)
        users = 0
        for fee, oldest in items:
            if fee <= 0:
                continue
            users += 1
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            for name, bound in AGE_BUCKETS:
                if age < bound:
                    sums[name] += fee
                    break
        for name, total in sums.items():
            self.backlog.labels(name).set(total)
        self.backlog_users.set(users)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
