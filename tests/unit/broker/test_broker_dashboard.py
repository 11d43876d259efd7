"""The dashboard's pure parts and queries: deadlines, latency bounds, exact sums, shipped assets."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.broker.conftest import throwaway_database
from zgserve.broker.dashboard import queries
from zgserve.broker.dashboard.api import gas_runway
from zgserve.broker.dashboard.backlog import next_deadline
from zgserve.broker.dashboard.latency import route_stats
from zgserve.broker.dashboard.page import SCRIPTS, DashboardAssets
from zgserve.broker.db import migrate, repo
from zgserve.broker.db.models import FeeRecord
from zgserve.broker.metrics import BrokerMetrics
from zgserve.broker.settings import NetworkSettings
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.policy import PolicyConfig, UserState
from zgserve.common.errors import ConfigError

CFG = PolicyConfig(deposit_share_bps=5_000, refund_margin_s=900, max_age_s=86_400)
NOW = 1_800_000_000.0


def state(**kw: object) -> UserState:
    values: dict[str, object] = {
        "user": "0xabc",
        "unsettled": 100,
        "oldest_unsettled_at": NOW - 60,
        "balance": 10_000,
        "pending_refund": 0,
    }
    return UserState(**(values | kw))  # type: ignore[arg-type]


def test_deadline_is_the_earliest_rule_by_time() -> None:
    d = next_deadline(state(), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger, d.at, d.share_bps) == (False, "max_age", NOW - 60 + 86_400, 100)
    # A refund unlocking in an hour (chain time 50 s ahead of the local clock) comes first.
    d = next_deadline(state(refund_unlocks=(int(NOW) + 50 + 3600,)), CFG, int(NOW) + 50, NOW)
    assert (d.due_now, d.trigger, d.at) == (False, "refund_unlock", NOW + 3600 - 900)


def test_deadline_due_now_agrees_with_the_policy() -> None:
    d = next_deadline(state(unsettled=6_000), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger, d.share_bps, d.share_limit_bps) == (True, "deposit_share", 6_000, 5_000)
    d = next_deadline(state(refund_unlocks=(int(NOW) + 100,)), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger) == (True, "refund_unlock")
    d = next_deadline(state(oldest_unsettled_at=NOW - 90_000), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger) == (True, "max_age")


def test_deadline_of_debts_and_of_nothing() -> None:
    d = next_deadline(state(unsettled=0, oldest_unsettled_at=None, debt=5, balance=0), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger, d.at, d.share_bps) == (False, "debt", None, None)
    d = next_deadline(state(unsettled=0, oldest_unsettled_at=None, debt=5), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger) == (True, "debt")
    d = next_deadline(state(unsettled=0, oldest_unsettled_at=None), CFG, int(NOW), NOW)
    assert (d.due_now, d.trigger, d.at) == (False, None, None)


def test_route_stats_bound_quantiles_by_buckets() -> None:
    m = BrokerMetrics()
    for seconds, status in [(0.004, "200")] * 90 + [(0.2, "200")] * 8 + [(3.0, "502")] * 2:
        m.requests.labels("/v1/proxy/chat/completions", status).inc()
        m.latency.labels("/v1/proxy/chat/completions", status).observe(seconds)
    m.requests.labels("/v1/user", "403").inc()
    stats = {s.route: s.to_json() for s in route_stats(m.registry)}
    chat = stats["/v1/proxy/chat/completions"]
    assert chat == {
        "route": "/v1/proxy/chat/completions",
        "requests": 100,
        "clientErrors": 0,
        "serverErrors": 2,
        "p50Seconds": 0.005,
        "p95Seconds": 0.25,
    }
    assert stats["/v1/user"]["clientErrors"] == 1
    assert stats["/v1/user"]["p50Seconds"] is None  # counted, never timed


def record(i: int, fee: int, at: datetime, model: str = "m", status: str = "complete") -> FeeRecord:
    return FeeRecord(
        request_id=f"r{i}",
        user=f"0x{i % 2:040x}",
        model=model,
        endpoint="/v1/chat/completions",
        stream=False,
        input_tokens=10,
        output_tokens=20,
        input_price=1,
        output_price=1,
        fee=fee,
        response_id=None,
        status=status,
        created_at=at,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/b.db"
        return
    async with throwaway_database() as url:
        yield url


@pytest.mark.parametrize("big", [False, True], ids=["int64-sums", "uint256-amounts"])
async def test_series_and_spend_are_exact(database_url: str, big: bool) -> None:
    engine = create_async_engine(database_url)
    await migrate(engine)
    base = 2**200 if big else 10**15
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [
        record(0, base + 1, now - timedelta(minutes=2)),
        record(1, base + 2, now - timedelta(minutes=2), model="n", status="disconnected"),
        record(2, base + 3, now - timedelta(minutes=1)),
        record(3, base + 4, now - timedelta(days=2)),  # before the window
    ]
    async with engine.begin() as conn:
        await repo.insert_records(conn, rows)
    async with engine.connect() as conn:
        series = await queries.traffic_series(conn, now - timedelta(hours=1), 60)
        spent = await queries.spent_by_user(conn)
        assert await queries.settled_on_chain(conn) == 0
        assert await queries.paid_series(conn, now - timedelta(hours=1), 60) == {}
        assert await queries.transactions(conn, offset=0, limit=10) == ([], 0)
    await engine.dispose()
    assert sum(b.fee for b in series) == 3 * base + 6
    assert sum(b.requests for b in series) == 3
    assert {b.model: b.incomplete for b in series if b.incomplete} == {"n": 1}
    assert all(b.start % 60 == 0 for b in series)
    assert spent == {f"0x{0:040x}": (2, 2 * base + 4), f"0x{1:040x}": (2, 2 * base + 6)}


def test_assets_are_versioned_and_styles_pinned_by_hash() -> None:
    assets = DashboardAssets.load()
    page = assets.page.decode()
    assert "{{" not in page
    for name in SCRIPTS:
        content, version = assets.scripts[name]
        assert version == hashlib.sha256(content).hexdigest()[:16]
        assert f'src="/dashboard/static/{name}?v={version}"' in page
    styles = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    assert len(styles) == 2
    for css in styles:
        digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in assets.csp
    assert "unsafe-inline" not in assets.csp
    assert "frame-ancestors 'none'" in assets.csp
    vendor = Path(__file__).resolve().parents[3] / "zgserve/broker/dashboard/static/vendor"
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()


def test_explorer_url_is_a_web_url() -> None:
    assert NetworkSettings(explorerUrl="https://chainscan.0g.ai/").explorer_url == "https://chainscan.0g.ai"
    for bad in ("javascript:alert(1)", "data:text/html,x", "//evil.example"):
        with pytest.raises((ValueError, ConfigError)):
            NetworkSettings(explorerUrl=bad)


def test_gas_warning_below_ten_full_settlements() -> None:
    cfg = SettlementConfig(batchSize=50, marginalGasPerEntry=60_000)
    per_tx = (95_000 + 50 * 60_000) * 10**9
    assert gas_runway(10 * per_tx, 10**9, cfg) == (per_tx, 10, False)
    assert gas_runway(10 * per_tx - 1, 10**9, cfg) == (per_tx, 9, True)
    assert gas_runway(0, 0, cfg)[1:] == (0, True)  # a zero gas price still costs something
