"""Real headless Chromium (Debian's /usr/bin/chromium) against a real server with the eSpeak engine.

One server and one browser per test module (start-up is the slow part); a fresh page per test.
Every page records console errors and uncaught exceptions; tests assert there were none.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageErrors:
    """Console errors and uncaught page exceptions seen by one page."""

    messages: list[str] = field(default_factory=list)

    def attach(self, page) -> None:  # type: ignore[no-untyped-def]
        page.on(
            "console", lambda m: m.type == "error" and self.messages.append(f"console: {m.text}")
        )
        page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    from engine.config import EngineConfig
    from engine.espeak import EspeakEngine
    from tests.server_fixtures import running_server

    with running_server(engine=EspeakEngine(EngineConfig())) as url:
        yield url


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser, page_errors: PageErrors):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page_errors.attach(page)
    yield page
    context.close()
