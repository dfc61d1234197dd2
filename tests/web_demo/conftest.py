"""Real headless Chromium (Debian's /usr/bin/chromium) against a real server with the eSpeak engine.

One server and one browser per test module (start-up is the slow part); a fresh page per test.
Every page records console errors and uncaught exceptions; tests assert there were none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.web_demo.browser_helpers import CHROMIUM, CHROMIUM_ARGS, PageErrors


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    from engine.config import EngineConfig
    from engine.espeak import EspeakEngine
    from tests.server_fixtures import running_server

    with running_server(engine=EspeakEngine(EngineConfig())) as url:
        yield url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):  # CI installs it (make test -> scripts/sysdeps.sh test): never skip there
            pytest.fail("Chromium is missing at /usr/bin/chromium in CI")
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page_errors.attach(page)
    yield page
    context.close()
