"""Browser tests: headless Debian chromium driven by Selenium, against real brokers on the devnet.

* ``browser`` (session): a :class:`Browser`; the tests skip when chromium or chromedriver is
  missing. Selenium Manager never runs: the driver is Debian's ``/usr/bin/chromedriver``.
* The broker fixtures (``start_broker``, ``funded_user``...) are those of the broker
  integration tests.

Selenium calls block, and the brokers run in the test's event loop: every browser step
goes through ``await browser.do(fn, ...)``, which runs it in a thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.broker.conftest import (  # noqa: F401  (fixtures, re-exported for this folder)
    fake_backend,
    funded_user,
    service_url,
    start_broker,
)

CHROMIUM = os.environ.get("ZGSERVE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ZGSERVE_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".zg" / "screenshots"
T = TypeVar("T")


class Browser:
    """One headless chromium; ``driver`` is the Selenium WebDriver."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def do(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def console_errors(self) -> list[str]:
        """Console messages at level SEVERE since the last call (reading clears the buffer)."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER})")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # containers without user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1600",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
