"""The FastAPI app: WebSocket ``/v1/stream`` glue, HTTP routes, lifespan (engine, worker, warm-up).

The WebSocket handler is thin: a reader task feeds parsed messages to the ``Session`` state machine,
a writer task drains the session's bounded outbox to the socket; when one ends the other is
cancelled. All engine work runs on the ``Scheduler``'s worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, WebSocket
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.base import Engine
from stream_server import live_metrics
from stream_server.auth import AccessControl
from stream_server.auth_asgi import install_access_control, warn_if_exposed
from stream_server.config import AppConfig
from stream_server.connection import Connection, Hub
from stream_server.drain import DrainGate, DrainingServer
from stream_server.errors import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN_LATER
from stream_server.handshake import head_timeout_protocol
from stream_server.metrics import ServerMetrics
from stream_server.overlay import OverlayBackend
from stream_server.protocol import PROTOCOL_VERSION, SAMPLE_RATES, Error, encode_server_message
from stream_server.ws_coalesce import CoalescingWebSocketProtocol

log = logging.getLogger("stream_server")

_WEB_SUFFIXES = (".html", ".js", ".mjs", ".css", ".svg", ".png", ".ico", ".json", ".wasm")


class _WebDemoFiles(StaticFiles):
    """StaticFiles for web_demo/ that serves only web assets (never the package's .py files)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        name = Path(path).name
        if name not in ("", ".") and not name.endswith(_WEB_SUFFIXES):
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)


class ReplicaHeader:
    """ASGI middleware: every HTTP response and WebSocket handshake names the serving replica
    (``x-stream-tts-replica``), so a client behind a load balancer can tell where it landed."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (b"x-stream-tts-replica", replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def _web_demo_dir() -> Path:
    return Path(str(importlib.resources.files("web_demo")))


def create_app(
    config: AppConfig,
    engine: Engine | None = None,
    engine_reason: str = "passed to create_app",
    *,
    replica: str = "",
    overlay: OverlayBackend | None = None,
    serve_after_warmup: bool = False,
    extra_routers: Sequence[APIRouter] = (),
    access: AccessControl | None = None,
) -> FastAPI:
    """Build the app. ``engine`` None: ``engine.factory.create_engine(config.engine)`` at start-up.

    ``/healthz`` answers 503 until the engine's warm-up (run on the worker thread) is done.
    ``replica`` names this server among several (Ray Serve): it is in ``ready``, ``/v1/info`` and
    every metric's labels. ``overlay``: a shared overlay queue (default: one of this app's own).
    ``serve_after_warmup``: the lifespan start-up waits for the warm-up (and fails with it), for
    hosts that route traffic only after start-up (Ray Serve replicas). ``extra_routers``: more
    routes from the host (they come before the static pages). ``access`` None: keys from
    ``server.api_keys_file`` and ``STREAM_TTS_API_KEYS`` (ConfigError when unreadable).
    """
    hub = Hub(config, ServerMetrics(replica=replica), engine, engine_reason)
    hub.replica = replica
    loop_lag = live_metrics.install(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if hub.engine is None:
            from engine.factory import create_engine

            hub.engine, hub.engine_reason = await asyncio.to_thread(create_engine, config.engine)
        hub.start(asyncio.get_running_loop())
        warm = asyncio.create_task(hub.warm_up(), name="warm-up")
        if serve_after_warmup:
            await asyncio.shield(warm)
            if hub.warmup_error:
                raise RuntimeError(hub.warmup_error)
        loop_lag.start()
        try:
            yield
        finally:
            await loop_lag.stop()
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
            await hub.shutdown()
            await asyncio.to_thread(hub.stop)

    app = FastAPI(title="stream-tts", version=str(PROTOCOL_VERSION), lifespan=lifespan)
    app.state.hub = hub
    app.add_middleware(DrainGate, hub=hub)

    @app.get("/healthz", responses={503: {"description": "warming up, or warm-up failed"}})
    async def healthz() -> JSONResponse:
        if hub.draining or hub.shutting_down:
            return JSONResponse({"status": "draining", "sessions": len(hub.connections)}, status_code=503)
        if not hub.warm:
            body = {"status": "error" if hub.warmup_error else "warming_up", "error": hub.warmup_error}
            return JSONResponse(body, status_code=503)
        eng = hub.require_engine()
        return JSONResponse(
            {"status": "ok", "engine": eng.name, "device": eng.device, "warmup_s": hub.warmup_s}
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(hub.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/voices")
    async def voices() -> JSONResponse:
        eng = hub.require_engine()
        infos = await asyncio.to_thread(eng.voices)
        return JSONResponse(
            {
                "engine": eng.name,
                "default": eng.default_voice,
                "voices": [{"name": v.name, "language": v.language, "description": v.description} for v in infos],
            }
        )

    @app.get("/v1/info")
    async def info() -> JSONResponse:
        eng = hub.require_engine()
        options = ["speed"] + (["nfe", "seed", "cfg_strength"] if eng.name == "f5" else [])
        s = config.server
        return JSONResponse(
            {
                "protocol_version": PROTOCOL_VERSION,
                "engine": eng.name,
                "engine_reason": hub.engine_reason,
                "replica": hub.replica,
                "device": eng.device,
                "sample_rate": eng.sample_rate,
                "default_voice": eng.default_voice,
                "default_format": s.default_format,
                "formats": list(SAMPLE_RATES),
                "sample_rates": {k: list(v) for k, v in SAMPLE_RATES.items()},
                "frame_ms": config.audio.frame_ms,
                "options": options,
                "ready": hub.warm,
                "limits": {
                    "max_message_chars": s.max_message_chars,
                    "max_session_chars": s.max_session_chars,
                    "max_pending_segments": s.max_pending_segments,
                    "max_sessions": s.max_sessions,
                    "idle_timeout_s": s.idle_timeout_s,
                },
            }
        )

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        refusal = None
        retry_ms = None
        if hub.shutting_down or hub.draining:
            refusal = ("shutting_down", "server is shutting down", CLOSE_GOING_AWAY)
        elif len(hub.connections) >= config.server.max_sessions:
            hub.metrics.rejected_sessions.inc()
            refusal = ("overloaded", "too many sessions; try again later", CLOSE_TRY_AGAIN_LATER)
        elif (over := hub.admit("session")) is not None:
            refusal, retry_ms = (over.code, over.message, CLOSE_TRY_AGAIN_LATER), over.retry_after_ms
        if refusal is not None:
            code, message, close_code = refusal
            hub.metrics.observe_error(code)
            hub.metrics.observe_refusal(code)
            with contextlib.suppress(Exception):
                await websocket.send_text(encode_server_message(Error(code, message, retry_ms)))
                await websocket.close(close_code, code)
            return
        await Connection(hub, websocket, uuid.uuid4().hex[:12]).run()

    _include_routers(app, hub, overlay)
    for router in extra_routers:
        app.include_router(router)
    access = access or AccessControl.from_config(config.server)
    install_access_control(app, access, on_refusal=hub.metrics.observe_error)
    if replica:  # outermost, so that refusals name the replica too
        app.add_middleware(ReplicaHeader, replica=replica)

    web_dir = _web_demo_dir()

    @app.get("/overlay", include_in_schema=False)
    async def overlay_page() -> FileResponse:
        page = web_dir / "overlay.html"
        if not page.is_file():
            raise HTTPException(status_code=404)
        return FileResponse(page)

    app.mount("/", _WebDemoFiles(directory=web_dir, html=True), name="web_demo")
    return app


def _include_routers(app: FastAPI, hub: Hub, overlay: OverlayBackend | None) -> None:
    """The voice upload router (F5 voice store; 409 for engines without one), the overlay router,
    and the compatible APIs (``stream_server.api``: OpenAI speech, ElevenLabs WebSockets)."""
    from stream_server.api.elevenlabs_routes import register_elevenlabs_routes
    from stream_server.api.openai_speech import create_openai_router
    from stream_server.overlay import create_overlay_router
    from stream_server.voice_routes import create_voice_router

    app.include_router(create_voice_router(lambda: getattr(hub.engine, "voice_store", None)))
    app.include_router(create_overlay_router(hub.config.server, overlay))
    app.include_router(create_openai_router(hub))
    register_elevenlabs_routes(app, hub)


class StreamServer(DrainingServer):
    """uvicorn's server, telling open sessions ``shutting_down`` (close 1001) before it stops;
    SIGTERM/SIGINT drain first (``stream_server.drain``)."""

    def drain_hub(self) -> Hub | None:
        return _hub_of(self.config.app)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        hub = _hub_of(self.config.app)
        if hub is not None and self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            hub.url = f"http://{host}:{port}"
            hub.bound = True
            hub.log_ready()

    async def shutdown(self, sockets: Any = None) -> None:
        hub = _hub_of(self.config.app)
        if hub is not None:
            await hub.shutdown()
        await super().shutdown(sockets)


def _hub_of(app: Any) -> Hub | None:
    state = getattr(app, "state", None)
    hub = getattr(state, "hub", None)
    return hub if isinstance(hub, Hub) else None


class WebSocketLifecycleAtDebug(logging.Filter):
    """uvicorn (and websockets through it) logs three info lines per WebSocket: "connection open",
    '"WebSocket /v1/stream" [accepted]' and "connection closed". At 64 connections a second, making
    and writing them was ~10 % of the main process's CPU per session (py-spy), so they are written
    only when the logger is at debug (``log_level = "debug"``). Refusals and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        msg = record.msg
        lifecycle = msg in ("connection open", "connection closed") or (
            isinstance(msg, str) and msg.endswith('" [accepted]') and "WebSocket" in msg)
        return not lifecycle or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def build_server(app: FastAPI, config: AppConfig, **uvicorn_kwargs: Any) -> StreamServer:
    """A uvicorn server for the app (websockets-sansio implementation writing a loop turn's frames
    in one send, ``ws_coalesce``; lifespan on)."""
    hub = _hub_of(app)
    # HTTP responses still running after the drain get this long before they are cancelled
    uvicorn_kwargs.setdefault("timeout_graceful_shutdown", 3)
    # one WebSocket message at most this big (uvicorn's default is 16 MiB); a `text` message of
    # max_message_chars characters, JSON-escaped (up to 12 bytes each), always fits
    uvicorn_kwargs.setdefault("ws_max_size", max(1 << 20, 12 * config.server.max_message_chars + (64 << 10)))
    # uvicorn's h11 protocol, with a deadline for request heads (handshake.py)
    uvicorn_kwargs.setdefault("http", head_timeout_protocol(
        config.server.handshake_timeout_s,
        (lambda: hub.metrics.observe_refusal("handshake_timeout")) if hub is not None else (lambda: None),
    ))
    cfg = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        # websockets-sansio (the legacy implementation imports deprecated websockets.legacy)
        ws=CoalescingWebSocketProtocol,
        ws_per_message_deflate=config.server.ws_compression,
        # named, not "auto": installing an extra (Ray brings uvloop and httptools) must not
        # silently change the server's event loop and HTTP parser (http: h11, from handshake.py)
        loop="asyncio",
        lifespan="on",
        log_level=config.server.log_level,
        **uvicorn_kwargs,
    )
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, WebSocketLifecycleAtDebug) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(WebSocketLifecycleAtDebug())
    if hub is not None:
        hub.expect_bind = True
    access = getattr(app.state, "access", None)
    if isinstance(access, AccessControl):
        warn_if_exposed(access, config.server.host)
    return StreamServer(cfg)
