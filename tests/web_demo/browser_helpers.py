"""Shared bits of the browser tests: Chromium's location and flags, and a page error recorder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page

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

    def attach(self, page: Page) -> None:
        page.on(
            "console", lambda m: m.type == "error" and self.messages.append(f"console: {m.text}")
        )
        page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))
