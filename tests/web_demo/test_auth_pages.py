"""The demo page and the overlay in headless Chromium against a server with access control on: the
page asks for the key once, keeps it, and streams with short-lived tokens (never the key in a URL);
a page opened with ?token= needs no key; the overlay takes its key from #key=."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Dialog, Page

from tests.web_demo.browser_helpers import PageErrors

pytestmark = pytest.mark.browser

KEY = "browser-key-0123456789abcdef"
SENTENCE = "Access control is on, and the page still speaks."
SPEAK = "text => window.ttsDemo.speak(text)"
# Chromium logs every 401 fetch as a console error; the first one is how the page learns it needs a key
EXPECTED_401 = "Failed to load resource: the server responded with a status of 401"


@pytest.fixture(scope="module")
def auth_server_url() -> Iterator[str]:
    from engine.config import EngineConfig
    from engine.espeak import EspeakEngine
    from stream_server.app import create_app
    from stream_server.auth import AccessControl
    from tests.server_fixtures import make_config, serve_app

    cfg = make_config()
    app = create_app(cfg, EspeakEngine(EngineConfig()), access=AccessControl(cfg.server, (KEY,)))
    with serve_app(app, cfg) as url:
        yield url


def _socket_urls(page: Page) -> list[str]:
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    return urls


def _unexpected(errors: PageErrors) -> list[str]:
    return [m for m in errors.messages if EXPECTED_401 not in m]


def test_demo_asks_for_the_key_once_and_streams_with_a_token(
    page: Page, auth_server_url: str, page_errors: PageErrors
) -> None:
    prompts: list[str] = []

    def answer(dialog: Dialog) -> None:
        prompts.append(dialog.message)
        dialog.accept(KEY)

    page.on("dialog", answer)
    sockets = _socket_urls(page)
    page.goto(auth_server_url + "/")
    page.evaluate("() => window.ttsDemo.ready")
    assert len(prompts) == 1 and "API key" in prompts[0]
    assert "espeak" in page.inner_text("#engine-pill")
    stats = page.evaluate(SPEAK, SENTENCE)
    assert stats["lastError"] is None and stats["framesReceived"] > 0
    assert stats["serverDone"]["type"] == "done"
    assert sockets and all("token=st1." in u and KEY not in u for u in sockets), sockets
    assert page.evaluate("() => localStorage.getItem('stream-tts.api-key')") == KEY

    # a reload finds the key in localStorage: no second prompt, and no 401 at all
    page_errors.messages.clear()
    page.reload()
    page.evaluate("() => window.ttsDemo.ready")
    assert page.evaluate(SPEAK, "Again.")["lastError"] is None
    assert len(prompts) == 1
    assert page_errors.messages == []


def test_demo_with_a_token_in_its_url_needs_no_key(
    page: Page, auth_server_url: str, page_errors: PageErrors
) -> None:
    page.on("dialog", lambda d: pytest.fail(f"unexpected prompt: {d.message}"))
    with httpx.Client(base_url=auth_server_url) as client:
        token = client.post("/v1/tokens", headers={"Authorization": f"Bearer {KEY}"}).json()["token"]
    page.goto(f"{auth_server_url}/?token={token}")
    page.evaluate("() => window.ttsDemo.ready")
    stats = page.evaluate(SPEAK, SENTENCE)
    assert stats["lastError"] is None and stats["framesReceived"] > 0
    assert page_errors.messages == []


def test_demo_without_a_key_shows_the_refusal(
    page: Page, auth_server_url: str, page_errors: PageErrors
) -> None:
    page.on("dialog", lambda d: d.dismiss())
    page.goto(auth_server_url + "/")
    page.wait_for_function("() => window.ttsDemo.stats.lastError !== null")
    assert "unauthorized" in page.evaluate("() => window.ttsDemo.stats.lastError")
    assert page.inner_text("#engine-pill") == "offline"
    assert _unexpected(page_errors) == []


def test_overlay_takes_its_key_from_the_fragment_and_speaks(
    page: Page, auth_server_url: str, page_errors: PageErrors
) -> None:
    page.on("dialog", lambda d: pytest.fail(f"unexpected prompt: {d.message}"))
    sockets = _socket_urls(page)
    page.goto(f"{auth_server_url}/overlay#key={KEY}")
    page.wait_for_function("() => window.ttsOverlay && window.ttsOverlay.stats.connected")
    assert KEY not in page.url  # the fragment is removed from the address bar
    with httpx.Client(base_url=auth_server_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        client.post("/v1/overlay/clear")
        said = client.post("/v1/overlay/say", json={"text": "Keyed overlay message."})
    assert said.status_code == 202
    page.wait_for_function("id => window.ttsOverlay.stats.spoken.includes(id)", arg=said.json()["id"])
    stats = page.evaluate("() => window.ttsOverlay.stats")
    assert stats["lastError"] is None and stats["captions"] == ["Keyed overlay message."]
    assert sockets and all("token=st1." in u and KEY not in u for u in sockets), sockets
    assert page_errors.messages == []
