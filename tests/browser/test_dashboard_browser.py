"""The provider dashboard in a real browser, against a real broker, service and devnet.

After a demo journey (billed requests from two users, one settlement, more requests),
chromium opens ``/dashboard``: the page loads without console errors and quickly, the
earnings it shows equal to the neuron what the chain says the provider collected and
what the broker's database recorded, "Settle now" (confirmed) settles and the page
follows, and a page of another origin can neither read the dashboard nor act on it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import alert_is_present
from selenium.webdriver.support.ui import Select, WebDriverWait
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.asgi import serve
from tests.browser.conftest import Browser
from tests.integration.broker.conftest import FundedUser, StartBroker, make_token
from zgserve.common.money import OG
from zgserve.devnet.network import Devnet

DEPOSIT = 2 * OG
PRICES = {"inputPrice": 3 * 10**12, "outputPrice": 9 * 10**12}
HERE = Path(__file__).resolve().parent
AMOUNTS = ("earn-onchain", "earn-recorded", "earn-unsettled")
EXPLORER = "https://explorer.example"


async def billed_requests(url: str, auth: str, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            body = {
                "model": "fake-model",
                "messages": [{"role": "user", "content": "count " * (3 + i)}],
                "max_tokens": 8 + i,
            }
            async with s.post(
                url + "/v1/proxy/chat/completions", json=body, headers={"Authorization": auth}
            ) as r:
                assert r.status == 200, await r.text()


def database_sums(db_file: Path) -> tuple[int, int]:
    """(all fees recorded, fees not settled), read with sqlite3 directly, summed in Python."""
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        rows = conn.execute("SELECT fee, settled FROM broker_requests").fetchall()
    return sum(int(f) for f, _ in rows), sum(int(f) for f, settled in rows if not settled)


async def chain_earnings(devnet: Devnet, provider: str, users: list[Any]) -> int:
    """What settlements took from the users' sub-accounts, read from the contract."""
    inference = devnet.chain.inference(devnet.chain.wallet(users[0].private_key))
    total = 0
    for user in users:
        account = await inference.get_account(user.address, provider)
        total += DEPOSIT - account.balance
    return total


def shown(driver: Any, element_id: str) -> int:
    value = driver.find_element(By.ID, element_id).get_attribute("data-neuron")
    assert value is not None, f"#{element_id} has no data-neuron"
    return int(value)


def wait_for(driver: Any, what: str, condition: Any, timeout: float = 15) -> None:
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}") from None


def open_dashboard(browser: Browser, url: str) -> dict[str, float]:
    """Load the page, wait for its first data, return its Navigation Timing in ms."""
    d = browser.driver
    d.get(url + "/dashboard")
    wait_for(
        d,
        "the first update",
        lambda d: refreshes(d) >= 1,
    )
    timing: dict[str, float] = d.execute_script(
        """const n = performance.getEntriesByType("navigation")[0];
        const data = performance.getEntriesByName("zg-first-data")[0];
        return {response: n.responseEnd, domContentLoaded: n.domContentLoadedEventEnd,
                load: n.loadEventEnd, firstData: data ? data.startTime : -1,
                transferred: performance.getEntriesByType("resource").reduce((a, r) => a + r.transferSize,
                                                                               n.transferSize)};"""
    )
    return timing


def transaction_hashes(db_file: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        return [r[0] for r in conn.execute("SELECT tx_hash FROM settlement_batches ORDER BY id DESC")]


def last_hour(browser: Browser) -> None:
    """Chart the last hour (a minute per point), as an operator watching a demo would."""
    d = browser.driver
    before = refreshes(d)
    Select(d.find_element(By.ID, "window")).select_by_value("3600,60")
    wait_for(d, "the hourly charts", lambda d: refreshes(d) > before)


def refreshes(d: Any) -> int:
    return int(d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes") or 0)


def unsettled_of(db_file: Path, user: str) -> int:
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        rows = conn.execute("SELECT fee FROM broker_requests WHERE user = ? AND NOT settled", (user.lower(),))
        return sum(int(r[0]) for r in rows)


def settle_user(browser: Browser, user: str, confirm: bool) -> None:
    """Click the user's "settle" in the backlog; confirm or dismiss the question."""
    d = browser.driver
    row = f'#backlog tr[data-key="{user}"]'
    d.find_element(By.CSS_SELECTOR, row + " button").click()
    wait_for(d, "the confirmation", alert_is_present())
    alert = d.switch_to.alert
    assert user in alert.text
    if not confirm:
        alert.dismiss()
        return
    alert.accept()
    wait_for(
        d, "the user to leave the backlog", lambda d: not d.find_elements(By.CSS_SELECTOR, row), timeout=30
    )


def settle_now(browser: Browser) -> None:
    d = browser.driver
    before = refreshes(d)
    d.find_element(By.ID, "settle-now").click()
    wait_for(d, "the confirmation", alert_is_present())
    alert = d.switch_to.alert
    assert "Settle every user" in alert.text
    alert.accept()
    wait_for(d, "unsettled to reach 0", lambda d: shown(d, "earn-unsettled") == 0, timeout=30)
    wait_for(
        d,
        "an update after settling",
        lambda d: refreshes(d) > before,
    )


@contextlib.asynccontextmanager
async def another_origin(target: str) -> AsyncIterator[str]:
    """A page on another port of this host (same site, another origin) that attacks ``target``."""
    html = (HERE / "evil.html").read_text().replace("__TARGET__", target)

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    async with serve(Starlette(routes=[Route("/", page)])) as url:
        yield url


def attack(browser: Browser, url: str) -> dict[str, str]:
    d = browser.driver
    d.get(url)
    wait_for(d, "the attacks to finish", lambda d: d.title == "done", timeout=40)
    results: dict[str, str] = d.execute_script("return window.results")
    browser.console_errors()  # the refusals are logged there; they belong to the other page
    return results


def settle_statuses(core: Any) -> dict[str, float]:
    """``POST /v1/settle`` answers by status, from the broker's own metrics."""
    out = {}
    for status in ("200", "403", "405", "415"):
        labels = {"route": "/v1/settle", "status": status}
        out[status] = core.metrics.registry.get_sample_value("zgbroker_requests_total", labels) or 0.0
    return out


def entry_count(db_file: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        return int(conn.execute("SELECT count(*) FROM settlement_entries").fetchone()[0])


async def test_dashboard_after_a_demo_journey(
    start_broker: StartBroker, funded_user: FundedUser, devnet: Devnet, browser: Browser
) -> None:
    async with start_broker(**PRICES, network={"explorerUrl": EXPLORER}) as broker:
        provider = broker.provider.address
        users = [await funded_user(provider, amount=DEPOSIT) for _ in range(2)]
        auths = [make_token(u.private_key, provider) for u in users]
        for auth in auths:
            await billed_requests(broker.url, auth, 3)
        async with aiohttp.ClientSession() as s, s.post(broker.url + "/v1/settle", json={}) as r:
            assert r.status == 200, await r.text()
        await billed_requests(broker.url, auths[0], 4)
        await billed_requests(broker.url, auths[1], 1)
        db_file = Path(broker.core.settings.database.url.split("///", 1)[1])

        timing = await browser.do(open_dashboard, browser, broker.url)
        print(
            f"\ndashboard load: response {timing['response']:.0f} ms, DOMContentLoaded "
            f"{timing['domContentLoaded']:.0f} ms, load {timing['load']:.0f} ms, first data "
            f"{timing['firstData']:.0f} ms, {timing['transferred'] / 1024:.0f} KiB"
        )
        assert timing["load"] < 1000, timing
        assert await browser.do(browser.console_errors) == []

        # The numbers, to the neuron: the chain, the database and the page agree.
        on_chain = await chain_earnings(devnet, provider, users)
        recorded, unsettled = database_sums(db_file)
        assert on_chain > 0
        assert unsettled > 0
        page = {k: await browser.do(shown, browser.driver, k) for k in AMOUNTS}
        assert page == {"earn-onchain": on_chain, "earn-recorded": recorded, "earn-unsettled": unsettled}
        links = await browser.do(browser.driver.find_elements, By.CSS_SELECTOR, "#transactions a")
        assert [await browser.do(a.get_attribute, "href") for a in links] == [
            f"{EXPLORER}/tx/{tx}" for tx in transaction_hashes(db_file)
        ]
        await browser.do(last_hour, browser)
        await browser.do(browser.screenshot, "dashboard")

        # Another origin can neither read nor act: every attempt fails, nothing settles.
        before, entries = settle_statuses(broker.core), entry_count(db_file)
        async with another_origin(broker.url) as evil:
            results = await browser.do(attack, browser, evil)
        print("another origin:", json.dumps(results, indent=1))
        assert len(results) == 8
        leaks = {k: v for k, v in results.items() if not (v.startswith("blocked") or v == "sent, unreadable")}
        assert not leaks
        after = settle_statuses(broker.core)
        assert after["200"] == before["200"]
        assert after["403"] - before["403"] == 2  # the no-cors fetch and the form: refused by the broker
        assert database_sums(db_file) == (recorded, unsettled)
        assert entry_count(db_file) == entries

        # One user, from their backlog row: a dismissed confirmation sends nothing.
        await browser.do(open_dashboard, browser, broker.url)
        one = users[1].address
        owed = unsettled_of(db_file, one)
        await browser.do(settle_user, browser, one, False)
        assert entry_count(db_file) == entries
        await browser.do(settle_user, browser, one, True)
        assert await chain_earnings(devnet, provider, users) == on_chain + owed
        assert unsettled_of(db_file, one) == 0

        # "Settle now", confirmed: the chain collects everything and the page follows.
        await browser.do(settle_now, browser)
        on_chain = await chain_earnings(devnet, provider, users)
        recorded, unsettled = database_sums(db_file)
        assert unsettled == 0
        assert on_chain == recorded
        assert await browser.do(shown, browser.driver, "earn-onchain") == on_chain
        rows = await browser.do(
            browser.driver.find_elements, By.CSS_SELECTOR, "#transactions tbody tr[data-key]"
        )
        assert len(rows) == 3
        assert await browser.do(browser.console_errors) == []
        await browser.do(browser.screenshot, "dashboard-settled")
