"""Access control applied to the app: an ASGI middleware that guards every route by path, the
``POST /v1/tokens`` route, refusals in each dialect, and the OpenAPI security declarations.

The middleware runs before routing, so a route added later (any ``/v1/...`` path) is covered
without code of its own. It checks the Origin, finds the credentials (``Authorization: Bearer``,
``xi-api-key``, ``X-API-Key``, or ``?token=``), asks ``AccessControl`` who the caller is and whether
the key's limits allow one more request or session, and puts a ``RequestAuth`` in the ASGI scope
(``request_auth(conn)``). A session's lease is released when the route's call returns (the
WebSocket closed, or the streamed HTTP body ended).

Refusals: HTTP answers OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with the
status of the ``AccessError`` (401, 403, 429 + ``Retry-After``); ``POST /v1/tokens`` answers an
invalid body in the same shape (400, the OpenAI routes' ``OpenAIRoute``). A WebSocket is accepted, told
the error (``{"type": "error", "code", "message"}`` on our protocol; ``{"message", "error": code,
"code": close code}`` on the ElevenLabs routes) and closed with the table's close code (1008, or 1013 for
limits).

ElevenLabs WebSockets (``/v1/text-to-speech/...``) may carry the key in their first message:
without a credential header the middleware lets them in with ``RequestAuth.pending`` set, and the
handler calls ``RequestAuth.complete(key)`` (raises ``AccessError``) then ``refuse_websocket``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from stream_server.api.openai_errors import OpenAIErrorBody, OpenAIRoute, error_type
from stream_server.auth import (
    ANONYMOUS,
    KEY_IN_MESSAGE_PREFIX,
    MAX_TOKEN_TTL_S,
    TOKEN_PREFIX,
    AccessControl,
    Policy,
    Principal,
    SessionLease,
)
from stream_server.errors import AccessError

__all__ = [
    "AccessMiddleware",
    "RequestAuth",
    "create_token_router",
    "install_access_control",
    "refuse_websocket",
    "request_auth",
]

log = logging.getLogger("stream_server")

SCOPE_KEY = "stream_tts.auth"
OVERLAY_PRINCIPAL = Principal("overlay_key", "key")


class RequestAuth:
    """The access decision for one request or WebSocket, in its ASGI scope."""

    def __init__(self, access: AccessControl | None, principal: Principal | None, session: bool) -> None:
        self._access = access
        self.principal = principal
        self._session = session
        self._lease: SessionLease | None = None
        self._shared_lease: str | None = None

    @property
    def pending(self) -> bool:
        """True when the key is still to come (an ElevenLabs socket's first message)."""
        return self.principal is None

    def start(self) -> None:
        """Admit the request against the key's limits (and take a session lease)."""
        if self._access is None or self.principal is None:
            return
        self._access.admit(self.principal)
        if self._session:
            self._lease = self._access.lease(self.principal)

    async def start_async(self) -> None:
        """``start``, against the shared per-key limits when the app has them (several replicas)."""
        access, principal = self._access, self.principal
        shared = access.shared if access is not None else None
        if shared is None or principal is None or principal.anonymous:
            self.start()
            return
        await shared.admit(principal.key_id)
        if self._session:
            self._shared_lease = await shared.lease(principal.key_id)

    async def release_async(self) -> None:
        self.release()
        lease, self._shared_lease = self._shared_lease, None
        if lease is not None and self._access is not None and self._access.shared is not None:
            await self._access.shared.release(lease)

    def complete(self, key: str | None) -> Principal:
        """Authenticate a pending socket with the key from its first message (no-op otherwise).

        Raises:
            AccessError: ``unauthorized``, ``rate_limited`` or ``too_many_sessions``.
        """
        if self.principal is not None:
            return self.principal
        assert self._access is not None  # pending only comes from the middleware
        principal = self._access.check_key(key)
        self.principal = principal
        try:
            self.start()
        except AccessError:
            self.principal = None
            raise
        return principal

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def request_auth(conn: HTTPConnection) -> RequestAuth:
    """The ``RequestAuth`` of a request or WebSocket (anonymous when no middleware is installed)."""
    auth = conn.scope.get(SCOPE_KEY)
    return auth if isinstance(auth, RequestAuth) else RequestAuth(None, ANONYMOUS, False)


def _credentials(headers: Headers, query: bytes) -> tuple[str | None, str | None]:
    """(key or token from a header, token from ``?token=``)."""
    given = None
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        given = value.strip()
    given = given or headers.get("xi-api-key") or headers.get("x-api-key")
    tokens = parse_qs(query.decode("latin-1")).get("token") if b"token=" in query else None
    return given, (tokens[0] if tokens else None)


def route_path(scope: Scope) -> str:
    """The path the router matches: without the ``root_path`` of an app mounted under a prefix."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root):]
    return path


def authenticate(
    access: AccessControl, scope: Scope, policy: Policy, *, websocket: bool
) -> Principal | None:
    """Who is calling (None: an ElevenLabs socket whose key comes in its first message).

    Raises:
        AccessError: unauthorized, invalid_token, token_expired, token_scope.
    """
    if policy is Policy.OPEN:
        return ANONYMOUS
    path, method = route_path(scope), scope.get("method", "GET")
    given, query_token = _credentials(Headers(scope=scope), scope.get("query_string", b""))
    overlay_write = access.accepts_overlay_key(path, method)
    if overlay_write and access.check_overlay_key(given):
        return OVERLAY_PRINCIPAL
    if not access.enabled:
        if overlay_write and access.cfg.overlay_api_key:  # the overlay's own key, before keys existed
            raise AccessError("unauthorized", "missing or invalid API key", 401)
        return ANONYMOUS
    token = query_token or (given if given and given.startswith(TOKEN_PREFIX) else None)
    if token is not None:
        principal = access.check_token(token)
        if policy is not Policy.STREAM:
            raise AccessError("token_scope", "streaming tokens do not open this route; use an API key", 403)
        return principal
    if given is None and websocket and path.startswith(KEY_IN_MESSAGE_PREFIX):
        return None
    return access.check_key(given)


def openai_error_body(exc: AccessError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": error_type(exc.status), "param": None, "code": exc.code}}


def _http_refusal(exc: AccessError) -> JSONResponse:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(openai_error_body(exc), status_code=exc.status, headers=headers)


async def refuse_websocket(websocket: WebSocket, exc: AccessError, *, accepted: bool = True) -> None:
    """Tell a WebSocket why it is refused and close it with the error table's close code."""
    close_code = exc.kind.close_code or 1008
    if route_path(websocket.scope).startswith(KEY_IN_MESSAGE_PREFIX):  # ElevenLabs' error shape
        body: dict[str, Any] = {"message": exc.message, "error": exc.code, "code": close_code}
    else:
        body = {"type": "error", "code": exc.code, "message": exc.message}
    with contextlib.suppress(Exception):  # the peer may be gone already
        if not accepted:
            await websocket.accept()
        await websocket.send_text(json.dumps(body))
        await websocket.close(close_code, exc.code)


class AccessMiddleware:
    """Guards every HTTP route and WebSocket by path (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, access: AccessControl, on_refusal: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.access = access
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        access = self.access
        websocket = kind == "websocket"
        path = route_path(scope)
        headers = Headers(scope=scope)
        try:
            access.check_origin(headers.get("origin"), headers.get("host"))
            policy = access.policy(path, websocket=websocket, method=scope.get("method", "GET"))
            principal = authenticate(access, scope, policy, websocket=websocket)
            auth = RequestAuth(access, principal, access.is_session(path, websocket=websocket))
            await auth.start_async()
        except AccessError as exc:
            if self.on_refusal is not None:
                self.on_refusal(exc.code)
            if websocket:
                await refuse_websocket(WebSocket(scope, receive, send), exc, accepted=False)
            else:
                await _http_refusal(exc)(scope, receive, send)
            return
        scope[SCOPE_KEY] = auth
        try:
            await self.app(scope, receive, send)
        finally:
            await auth.release_async()


# --------------------------------------------------------------------------- POST /v1/tokens


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in: int | None = Field(
        default=None, ge=1, le=MAX_TOKEN_TTL_S, description="seconds; default server.token_ttl_s"
    )

    @field_validator("expires_in", mode="before")
    @classmethod
    def _json_integer(cls, value: object) -> object:
        # JSON Schema's integer: 60 and 60.0, never true or "60"
        if isinstance(value, (bool, str)):
            raise ValueError("expires_in must be an integer")
        return value


class TokenResponse(BaseModel):
    token: str = Field(description="pass as ?token=... (or Authorization: Bearer) on /v1/stream")
    scope: Literal["stream"]
    expires_at: int = Field(description="unix seconds")
    expires_in: int = Field(description="seconds from now")


_TOKEN_ERRORS: dict[int | str, dict[str, Any]] = {  # (401/403/429: _declare_security)
    400: {"model": OpenAIErrorBody, "description": "invalid body: invalid_json, invalid_request, "
          "unknown_parameter, invalid_value (expires_in not an integer in 1..900)"},
    "4XX": {"model": OpenAIErrorBody, "description": "any other client error"},
}


def create_token_router(access: AccessControl) -> APIRouter:
    # OpenAIRoute: an invalid body is a 400 in the OpenAI shape, like the access refusals
    router = APIRouter(route_class=OpenAIRoute)

    @router.post("/v1/tokens", response_model=TokenResponse, status_code=200, responses=_TOKEN_ERRORS)
    async def mint_token(request: Request, body: TokenRequest | None = Body(default=None)) -> TokenResponse:  # noqa: B008
        """Mint a short-lived token for the streaming routes, so a browser page never holds a key."""
        principal = request_auth(request).principal or ANONYMOUS
        ttl = body.expires_in if body is not None and body.expires_in is not None else None
        token, expires_at = access.mint_token(principal, ttl)
        remaining = max(0, expires_at - int(access.now()))
        return TokenResponse(token=token, scope="stream", expires_at=expires_at, expires_in=remaining)

    return router


# --------------------------------------------------------------------------- wiring


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }


def _declare_security(app: FastAPI, access: AccessControl) -> None:
    """Add the security schemes and the 401/403/429 answers to every guarded operation."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["AccessErrorBody"] = _error_schema()
        components.setdefault("securitySchemes", {}).update(
            {
                "bearer": {"type": "http", "scheme": "bearer"},
                "xiApiKey": {"type": "apiKey", "in": "header", "name": "xi-api-key"},
                "streamToken": {"type": "apiKey", "in": "query", "name": "token"},
            }
        )
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/AccessErrorBody"}}}}
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                policy = access.policy(path, websocket=False, method=method.upper())
                responses = op.setdefault("responses", {})
                responses.setdefault("403", {"description": "forbidden_origin or token_scope", **ref})
                if policy is Policy.OPEN and not access.accepts_overlay_key(path, method.upper()):
                    continue
                if access.enabled:
                    security: list[dict[str, list[str]]] = [{"bearer": []}, {"xiApiKey": []}]
                    if policy is Policy.STREAM:
                        security.append({"streamToken": []})
                    op["security"] = security
                responses.setdefault("401", {"description": "missing or invalid key or token", **ref})
                responses.setdefault("429", {"description": "rate_limited or too_many_sessions", **ref})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_access_control(
    app: FastAPI, access: AccessControl, on_refusal: Callable[[str], None] | None = None
) -> None:
    """Guard ``app`` (middleware), add ``POST /v1/tokens``, CORS when origins are configured."""
    app.state.access = access
    app.include_router(create_token_router(access))
    app.add_middleware(AccessMiddleware, access=access, on_refusal=on_refusal)
    origins = list(access.cfg.allowed_origins)
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(  # outermost: answers preflights before access control
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["authorization", "xi-api-key", "x-api-key", "content-type"],
            expose_headers=["retry-after"],
        )
    _declare_security(app, access)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(access: AccessControl, host: str) -> bool:
    """Log a loud warning when the server listens beyond loopback with no API keys."""
    if access.enabled or is_loopback(host):
        return False
    log.warning(
        "!!! stream-tts listens on %s WITHOUT API KEYS: anyone who can reach this address can use "
        "it. Set STREAM_TTS_API_KEYS or server.api_keys_file (see docs/INTEGRATIONS.md). !!!",
        host,
    )
    return True
