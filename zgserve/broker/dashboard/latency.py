"""Requests, errors and latency per route since start, read from the broker's metrics registry.

The same counters ``/metrics`` exposes, so the dashboard and a Prometheus scrape agree.
Quantiles are the upper bound of the histogram bucket they fall in, as Prometheus'
``histogram_quantile`` would bound them, never an interpolation that looks more precise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

REQUESTS = "zgbroker_requests_total"
LATENCY_BUCKET = "zgbroker_request_duration_seconds_bucket"


@dataclass(slots=True)
class RouteStats:
    route: str
    requests: int = 0
    client_errors: int = 0  # 4xx: refused input, auth, balance
    server_errors: int = 0  # 5xx: the broker, the service or the chain failed
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def quantile(self, q: float) -> float | None:
        """The bucket bound below which ``q`` of the requests finished (None: no data, or beyond)."""
        ordered = sorted(self.buckets.items())
        total = ordered[-1][1] if ordered else 0
        if total <= 0:
            return None
        for bound, count in ordered:
            if count >= q * total:
                return None if math.isinf(bound) else bound
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "requests": self.requests,
            "clientErrors": self.client_errors,
            "serverErrors": self.server_errors,
            "p50Seconds": self.quantile(0.5),
            "p95Seconds": self.quantile(0.95),
        }


def route_stats(registry: Any) -> list[RouteStats]:
    """Per route label, busiest first."""
    stats: dict[str, RouteStats] = {}
    for family in registry.collect():
        for sample in family.samples:
            route = sample.labels.get("route")
            if route is None:
                continue
            s = stats.setdefault(route, RouteStats(route))
            if sample.name == REQUESTS:
                n = int(sample.value)
                s.requests += n
                status = sample.labels.get("status", "")
                s.client_errors += n if status.startswith("4") else 0
                s.server_errors += n if status.startswith("5") else 0
            elif sample.name == LATENCY_BUCKET:
                bound = float(sample.labels["le"])
                s.buckets[bound] = s.buckets.get(bound, 0.0) + sample.value
    return sorted(stats.values(), key=lambda s: (-s.requests, s.route))
