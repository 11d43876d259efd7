"""The dashboard is under the admin API's rules: loopback or the admin token, never another site.

Plain HTTP checks of what a browser relies on (headers, refusals in the one error shape),
and, in chromium, the admin-token flow: the page asks for the token, keeps it in the tab's
sessionStorage, sends it as a header (never in a URL), and updates prices after confirmation.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import alert_is_present
from yarl import URL

from tests.browser.conftest import Browser
from tests.browser.test_dashboard_browser import wait_for
from tests.integration.broker.conftest import StartBroker
from zgserve.devnet.network import Devnet

TOKEN = "dashboard-admin-token-0123456789"
API = ("/v1/earnings", "/v1/traffic", "/v1/backlog", "/v1/settlement/transactions", "/v1/wallet")
EVIL = "http://evil.example"


async def status_code(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, url, **kw) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else None
        assert "access-control-allow-origin" not in r.headers, url
        return r.status, body


async def test_page_headers_and_refusals_on_loopback(start_broker: StartBroker) -> None:
    async with start_broker() as broker, aiohttp.ClientSession() as s:
        async with s.get(broker.url + "/dashboard", headers={"Origin": EVIL}) as r:
            assert r.status == 200
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self'" in csp
            assert "default-src 'none'" in csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["cross-origin-resource-policy"] == "same-origin"
            assert "access-control-allow-origin" not in r.headers
            page = await r.text()
        assert "http://" not in page.replace("http://www.w3.org", "")  # nothing loaded from elsewhere
        for path in ("/dashboard", "/dashboard/static/dashboard.js", *API):
            assert (await status_code(s, "GET", broker.url + path))[0] == 200, path
            # A browser's request from another site or origin, a rebinding host name, a preflight.
            for headers in (
                {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site"},
                {"Host": "evil.example"},
            ):
                status, body = await status_code(s, "GET", broker.url + path, headers=headers)
                assert (status, body["error"]["code"]) == (403, "admin_forbidden"), (path, headers)
            preflight = {"Origin": EVIL, "Access-Control-Request-Method": "GET"}
            status, body = await status_code(s, "OPTIONS", broker.url + path, headers=preflight)
            assert status == 405, path
        # Only the shipped files are served: a path out of the folder names nothing.
        escape = URL(broker.url + "/dashboard/static/%2E%2E/__init__.py", encoded=True)
        status, body = await status_code(s, "GET", escape)
        assert (status, body["error"]["type"]) == (404, "not_found_error")
        status, body = await status_code(s, "GET", broker.url + "/dashboard/static/nothing.js")
        assert (status, body["error"]["type"]) == (404, "not_found_error")
        status, body = await status_code(s, "GET", broker.url + "/v1/earnings?window=60&bucket=0")
        assert (status, body["error"]["param"]) == (400, "bucket")
        status, body = await status_code(s, "GET", broker.url + "/v1/earnings?window=2592000&bucket=60")
        assert (status, body["error"]["param"]) == (400, "bucket")


def log_in(browser: Browser, url: str) -> dict[str, Any]:
    d = browser.driver
    d.get(url + "/dashboard")
    wait_for(d, "the token form", lambda d: d.find_element(By.ID, "login").is_displayed())
    assert d.find_element(By.ID, "earn-onchain").get_attribute("data-neuron") is None
    refused = browser.console_errors()  # the first calls were refused (403) before the token
    d.find_element(By.ID, "token").send_keys(TOKEN)
    d.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(
        d, "the data", lambda d: d.find_element(By.ID, "earn-onchain").get_attribute("data-neuron") == "0"
    )
    return {
        "refused": refused,
        "url": d.current_url,
        "stored": d.execute_script("return sessionStorage.getItem('zgserve.adminToken')"),
        "login_hidden": not d.find_element(By.ID, "login").is_displayed(),
        "errors": browser.console_errors(),
    }


def update_prices(browser: Browser, dismiss_first: bool) -> str:
    d = browser.driver
    d.find_element(By.ID, "price-in").send_keys("4000000000000")
    d.find_element(By.ID, "price-out").send_keys("8000000000000")
    if dismiss_first:
        d.find_element(By.ID, "update-prices").click()
        wait_for(d, "the confirmation", alert_is_present())
        d.switch_to.alert.dismiss()
    d.find_element(By.ID, "update-prices").click()
    wait_for(d, "the confirmation", alert_is_present())
    d.switch_to.alert.accept()
    wait_for(
        d,
        "the new price",
        lambda d: "4000000000000" in d.find_element(By.ID, "service").get_attribute("innerHTML"),
    )
    return str(d.find_element(By.ID, "log").text)


async def test_admin_token_flow_in_the_browser(
    start_broker: StartBroker, devnet: Devnet, browser: Browser
) -> None:
    async with start_broker(admin={"token": TOKEN}) as broker:
        seen = await browser.do(log_in, browser, broker.url)
        assert seen["refused"]
        assert all("403" in m for m in seen["refused"]), seen["refused"]
        assert TOKEN not in seen["url"]
        assert seen["stored"] == TOKEN
        assert seen["login_hidden"]
        assert seen["errors"] == []
        async with aiohttp.ClientSession() as s:  # without the token, the data stays closed
            for path in API:
                status, body = await status_code(s, "GET", broker.url + path)
                assert (status, body["error"]["code"]) == (403, "admin_forbidden")
        before = await devnet.chain.inference(devnet.chain.wallet(broker.provider.private_key)).get_service(
            broker.provider.address
        )
        log = await browser.do(update_prices, browser, True)
        assert "service" in log
        service = await devnet.chain.inference(devnet.chain.wallet(broker.provider.private_key)).get_service(
            broker.provider.address
        )
        assert (service.input_price, service.output_price) == (4_000_000_000_000, 8_000_000_000_000)
        assert service.updated_at >= before.updated_at
        assert await browser.do(browser.console_errors) == []
        await browser.do(browser.driver.execute_script, "sessionStorage.clear()")
