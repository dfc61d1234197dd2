"""Access control on a real server: every route of the app (found in ``app.routes``, so routes added
later are covered too) refuses a missing key, a wrong key, an expired or tampered token and a
foreign Origin with the documented code, and lets a valid key (or token, where allowed) through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stream_server.app import create_app
from stream_server.auth import KEY_IN_MESSAGE_PREFIX, AccessControl, Policy
from stream_server.auth_asgi import _declare_security
from tests.server_fixtures import SineBurstEngine, make_config, serve_app, ws_url

KEY = "test-key-0123456789abcdef"
FOREIGN = "http://evil.example"
ACCESS_CODES = {"unauthorized", "invalid_token", "token_expired", "token_scope", "forbidden_origin",
                "rate_limited", "too_many_sessions"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    cfg = make_config(key_requests_per_minute=0, key_max_sessions=0, metrics_public=False)
    app = create_app(cfg, SineBurstEngine(), access=AccessControl(cfg.server, (KEY,)))
    with serve_app(app, cfg) as url:
        yield url, app


def _concrete(path: str) -> str:
    # "default": a value every route with a parameter accepts (a voice_id too), so auth is what is tested
    return re.sub(r"\{[^}]+\}", "default", path)


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) for every route, inside included routers too (FastAPI keeps those
    as ``_IncludedRouter`` branches with their own prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path"):
            yield prefix + route.path, route


def http_routes(app: FastAPI) -> list[tuple[str, str]]:
    out = []
    for path, route in _walk(app.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                out.append((method, _concrete(path)))
    return out


def ws_routes(app: FastAPI) -> list[str]:
    return [_concrete(path) for path, r in _walk(app.routes) if isinstance(r, (WebSocketRoute, APIWebSocketRoute))]


def _tokens(app: FastAPI) -> dict[str, str]:
    access: AccessControl = app.state.access
    principal = access.check_key(KEY)
    good, _ = access.mint_token(principal)
    expired, _ = access.mint_token(principal, -5)
    head, sig = good.rsplit(".", 1)
    tampered = head + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    return {"good": good, "expired": expired, "tampered": tampered}


def _assert_refused(resp: httpx.Response, status: int, code: str, where: str) -> None:
    assert resp.status_code == status, (where, resp.status_code, resp.text)
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, where
    assert body["error"]["code"] == code, where


def test_every_http_route_is_guarded(server: tuple[str, FastAPI]) -> None:
    url, app = server
    access: AccessControl = app.state.access
    tokens = _tokens(app)
    routes = http_routes(app)
    assert ("POST", "/v1/tokens") in routes and ("GET", "/v1/info") in routes
    guarded = 0
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for method, path in routes:
            policy = access.policy(path, websocket=False, method=method)
            where = f"{method} {path}"
            if policy is Policy.OPEN:
                assert client.request(method, path).status_code not in (401, 403), where
                continue
            guarded += 1
            _assert_refused(client.request(method, path), 401, "unauthorized", where)
            bad = {"Authorization": "Bearer wrong-key-0123456789"}
            _assert_refused(client.request(method, path, headers=bad), 401, "unauthorized", where)
            _assert_refused(client.request(method, path, headers={"xi-api-key": "nope"}), 401, "unauthorized", where)
            for name, code in (("expired", "token_expired"), ("tampered", "invalid_token")):
                resp = client.request(method, path, params={"token": tokens[name]})
                _assert_refused(resp, 401, code, f"{where} {name} token")
            key = {"Authorization": f"Bearer {KEY}"}
            _assert_refused(client.request(method, path, headers={**key, "Origin": FOREIGN}), 403, "forbidden_origin", where)
            ok = client.request(method, path, headers=key)
            assert ok.status_code not in (401, 403, 429) and ok.status_code < 500, (where, ok.text)
            assert client.request(method, path, headers={"xi-api-key": KEY}).status_code == ok.status_code
            with_token = client.request(method, path, params={"token": tokens["good"]})
            if policy is Policy.STREAM:
                assert with_token.status_code == ok.status_code, where
            else:
                _assert_refused(with_token, 403, "token_scope", where)
    assert guarded >= 8


def test_open_routes_stay_open(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    with httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200 and client.get("/overlay").status_code == 200
        assert client.get("/app.js").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        # metrics_public=False in this server
        _assert_refused(client.get("/metrics"), 401, "unauthorized", "/metrics")
        assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def _code(msg: dict[str, Any]) -> Any:
    """The error code of a refusal: ``code`` on our protocol, ``error`` in ElevenLabs' shape."""
    return msg.get("error") if isinstance(msg.get("error"), str) else msg.get("code")


async def _ws_outcome(url: str, *, headers: dict[str, str] | None = None,
                      first: dict[str, Any] | None = None, wait_s: float = 0.5) -> tuple[dict[str, Any] | None, int | None]:
    """(first JSON message or None, close code or None while still open after ``wait_s``)."""
    msg = None
    async with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        if first is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(first))
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(wait_s):
                while msg is None:
                    raw = await ws.recv()
                    if isinstance(raw, str):
                        msg = json.loads(raw)
        if msg is not None and _code(msg) in ACCESS_CODES:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await ws.wait_closed()
        return msg, ws.close_code


async def test_every_websocket_is_guarded(server: tuple[str, FastAPI]) -> None:
    url, app = server
    access: AccessControl = app.state.access
    tokens = _tokens(app)
    paths = ws_routes(app)
    assert "/v1/stream" in paths and "/v1/overlay/events" in paths
    base = ws_url(url).removesuffix("/v1/stream")
    for path in paths:
        stream_route = access.policy(path, websocket=True) is Policy.STREAM
        # ElevenLabs sockets may bring their key in the first message: send one without a key
        first = {"text": " "} if path.startswith(KEY_IN_MESSAGE_PREFIX) else None
        cases: list[tuple[str, dict[str, str], str, int]] = [
            ("", {}, "unauthorized", 1008),
            ("", {"Authorization": "Bearer wrong-key-0123456789"}, "unauthorized", 1008),
            (f"?token={tokens['expired']}", {}, "token_expired", 1008),
            (f"?token={tokens['tampered']}", {}, "invalid_token", 1008),
            ("", {"Authorization": f"Bearer {KEY}", "Origin": FOREIGN}, "forbidden_origin", 1008),
        ]
        if not stream_route:
            cases.append((f"?token={tokens['good']}", {}, "token_scope", 1008))
        for query, headers, code, close in cases:
            msg, close_code = await _ws_outcome(base + path + query, headers=headers, first=first)
            assert msg is not None and _code(msg) == code, (path, query, headers, msg)
            assert close_code == close, (path, code, close_code)
        for query, headers in [("", {"Authorization": f"Bearer {KEY}"}), ("", {"xi-api-key": KEY}),
                               (f"?token={tokens['good']}", {})][: 3 if stream_route else 2]:
            msg, close_code = await _ws_outcome(base + path + query, headers=headers)
            assert msg is None or _code(msg) not in ACCESS_CODES, (path, msg)
            assert close_code not in (1008, 1013), (path, close_code)


async def test_stream_with_a_token_synthesizes(server: tuple[str, FastAPI]) -> None:
    url, app = server
    token = _tokens(app)["good"]
    async with connect(ws_url(url) + f"?token={token}", origin=url) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "text", "text": "Hello."}))
        await ws.send(json.dumps({"type": "end"}))
        kinds, frames = [], 0
        async for raw in ws:
            if isinstance(raw, bytes):
                frames += 1
            else:
                kinds.append(json.loads(raw)["type"])
    assert kinds[0] == "ready" and kinds[-1] == "done" and frames > 0


def test_mint_token_route(server: tuple[str, FastAPI]) -> None:
    url, app = server
    access: AccessControl = app.state.access
    with httpx.Client(base_url=url) as client:
        resp = client.post("/v1/tokens", headers={"Authorization": f"Bearer {KEY}"}, json={"expires_in": 60})
        assert resp.status_code == 200
        body = resp.json()
        assert body["scope"] == "stream" and body["expires_in"] == 60
        assert access.check_token(body["token"]).via == "token"
        no_body = client.post("/v1/tokens", headers={"Authorization": f"Bearer {KEY}"})
        assert no_body.status_code == 200 and no_body.json()["expires_in"] == 300  # token_ttl_s


@pytest.mark.parametrize(
    ("content", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ('{"expires_in": 60,}', "invalid_json", None),
        ("[60]", "invalid_request", None),
        ('"60"', "invalid_request", None),
        ('{"expires_in": "60"}', "invalid_value", "expires_in"),
        ('{"expires_in": true}', "invalid_value", "expires_in"),
        ('{"expires_in": 1.5}', "invalid_value", "expires_in"),
        ('{"expires_in": [60]}', "invalid_value", "expires_in"),
        ('{"scope": "all"}', "unknown_parameter", "scope"),
        ('{"expires_in": 60, "key": "x"}', "unknown_parameter", "key"),
        ('{"expires_in": 0}', "invalid_value", "expires_in"),
        ('{"expires_in": -5}', "invalid_value", "expires_in"),
        ('{"expires_in": 901}', "invalid_value", "expires_in"),
        ('{"expires_in": 100000000000000000000}', "invalid_value", "expires_in"),
    ],
)
def test_mint_token_refuses_a_bad_body_in_the_openai_shape(
        server: tuple[str, FastAPI], content: str, code: str, param: str | None) -> None:
    url, _ = server
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    resp = httpx.post(url + "/v1/tokens", headers=headers, content=content)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)


def test_openapi_declares_security(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    schema = httpx.get(url + "/openapi.json").json()
    assert {"bearer", "xiApiKey", "streamToken"} <= set(schema["components"]["securitySchemes"])
    info = schema["paths"]["/v1/info"]["get"]
    assert {"streamToken": []} in info["security"] and "401" in info["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "401" not in schema["paths"]["/healthz"]["get"]["responses"]
    assert _declare_security  # the function that builds these


# --------------------------------------------------------------------------- limits and origins


@contextlib.contextmanager
def _server(keys: tuple[str, ...] = (KEY,), **server: Any) -> Iterator[str]:
    cfg = make_config(**server)
    app = create_app(cfg, SineBurstEngine(), access=AccessControl(cfg.server, keys))
    with serve_app(app, cfg) as url:
        yield url


async def test_requests_per_minute_refusals() -> None:
    with _server(key_requests_per_minute=3) as url:
        key = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):
                assert (await client.get("/v1/info", headers=key)).status_code == 200
            resp = await client.get("/v1/info", headers=key)
            _assert_refused(resp, 429, "rate_limited", "4th request")
            assert resp.headers["Retry-After"] == "20"
        msg, close = await _ws_outcome(ws_url(url), headers=key)
        assert msg is not None and msg["code"] == "rate_limited" and close == 1013


async def test_concurrent_sessions_per_key() -> None:
    with _server(key_max_sessions=1) as url:
        key = {"Authorization": f"Bearer {KEY}"}
        async with connect(ws_url(url), additional_headers=key) as first:
            await first.send(json.dumps({"type": "start"}))
            assert json.loads(await first.recv())["type"] == "ready"
            msg, close = await _ws_outcome(ws_url(url), headers=key)
            assert msg is not None and msg["code"] == "too_many_sessions" and close == 1013
        # the lease is released when the first socket closes
        for _ in range(100):
            msg, close = await _ws_outcome(ws_url(url), headers=key, first={"type": "start"}, wait_s=2)
            if msg is not None and msg["type"] == "ready":
                break
            await asyncio.sleep(0.05)
        assert msg is not None and msg["type"] == "ready"


async def test_cors_and_allowed_origins() -> None:
    origin = "https://app.example"
    with _server(allowed_origins=(origin,)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            pre = await client.options("/v1/info", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization"})
            assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
            resp = await client.get("/v1/info", headers={"Origin": origin, "Authorization": f"Bearer {KEY}"})
            assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == origin
            refused = await client.get("/v1/info", headers={"Origin": origin})
            assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
            _assert_refused(await client.get("/v1/info", headers={"Origin": FOREIGN, "Authorization": f"Bearer {KEY}"}),
                            403, "forbidden_origin", "foreign")
        msg, close = await _ws_outcome(ws_url(url), headers={"Origin": origin, "Authorization": f"Bearer {KEY}"},
                                       first={"type": "start"}, wait_s=5)
        assert msg is not None and msg["type"] == "ready"


async def test_without_keys_everything_is_open_but_origins_are_checked() -> None:
    with _server(keys=()) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/v1/info")).status_code == 200
            minted = await client.post("/v1/tokens")
            assert minted.status_code == 200 and minted.json()["token"].startswith("st1.")
            _assert_refused(await client.post("/v1/overlay/say", json={"text": "hi"}, headers={"Origin": FOREIGN}),
                            403, "forbidden_origin", "csrf")
        msg, close = await _ws_outcome(ws_url(url), first={"type": "start"}, wait_s=5)
        assert msg is not None and msg["type"] == "ready"
        msg, close = await _ws_outcome(ws_url(url), headers={"Origin": FOREIGN})
        assert msg is not None and msg["code"] == "forbidden_origin" and close == 1008


async def test_legacy_overlay_key_opens_overlay_posts_only() -> None:
    legacy = "overlay-secret"
    with _server(overlay_api_key=legacy) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            ok = await client.post("/v1/overlay/say", json={"text": "hi"}, headers={"X-API-Key": legacy})
            assert ok.status_code == 202
            _assert_refused(await client.get("/v1/info", headers={"Authorization": f"Bearer {legacy}"}),
                            401, "unauthorized", "legacy key elsewhere")
            assert (await client.post("/v1/overlay/skip", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200


def test_keys_from_the_environment_and_never_logged(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("STREAM_TTS_API_KEYS", KEY)
    cfg = make_config()
    with caplog.at_level(logging.DEBUG), serve_app(create_app(cfg, SineBurstEngine()), cfg) as url:
        with httpx.Client(base_url=url) as client:
            assert client.get("/v1/info").status_code == 401
            assert client.get("/v1/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert client.get("/v1/info", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
    assert KEY not in caplog.text


def test_build_server_warns_when_exposed_without_keys(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from stream_server.app import build_server

    monkeypatch.delenv("STREAM_TTS_API_KEYS", raising=False)
    cfg = make_config(host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="stream_server"):
        build_server(create_app(cfg, SineBurstEngine()), cfg)
    assert "WITHOUT API KEYS" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream_server"):
        build_server(create_app(cfg, SineBurstEngine(), access=AccessControl(cfg.server, (KEY,))), cfg)
        build_server(create_app(make_config(), SineBurstEngine()), make_config())
    assert "WITHOUT API KEYS" not in caplog.text


async def test_an_app_mounted_under_a_prefix_is_guarded_too() -> None:
    cfg = make_config()
    app = create_app(cfg, SineBurstEngine(), access=AccessControl(cfg.server, (KEY,)))
    transport = httpx.ASGITransport(app=app, root_path="/tts")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        _assert_refused(await client.get("/tts/v1/info"), 401, "unauthorized", "under /tts")
        minted = await client.post("/tts/v1/tokens", headers={"Authorization": f"Bearer {KEY}"})
        assert minted.status_code == 200
