"""Access control, sans I/O: API keys, signed streaming tokens, per-key limits, Origin checks.

``AccessControl`` decides; ``stream_server.auth_asgi`` applies its decisions to every HTTP request
and WebSocket by path (an ASGI middleware), so routes need no code of their own. Everything raises
``AccessError`` (a row of ``stream_server.errors.ERROR_TABLE`` plus an HTTP status).

- Keys come from ``ServerConfig.api_keys_file`` (one per line, ``#`` comments) and the
  ``STREAM_TTS_API_KEYS`` environment variable (comma-separated). No key = access control off
  (every route open, as on a single-user 127.0.0.1 server). Keys are compared in constant time
  (``hmac.compare_digest`` over their SHA-256) and never logged: a principal is named by
  ``key_id`` (``key_`` + 10 hex digits of the key's SHA-256).
- Tokens (``POST /v1/tokens``): ``st1.<payload>.<signature>``, base64url; the payload is
  ``{"k": key_id, "s": "stream", "e": expiry unix seconds}``, signed with HMAC-SHA256 under
  ``ServerConfig.token_secret`` (random per process when empty). A token lives at most
  ``MAX_TOKEN_TTL_S`` and is only good for the streaming routes (``Policy.STREAM``).
- Limits per key: ``key_max_sessions`` concurrent sessions (``SessionLease``) and
  ``key_requests_per_minute`` (a token bucket: bursts up to the minute's budget, refilled evenly).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from stream_server.config import ServerConfig
from stream_server.errors import AccessError, ConfigError

__all__ = [
    "ANONYMOUS",
    "AccessControl",
    "AccessError",
    "Policy",
    "Principal",
    "SessionLease",
    "load_api_keys",
]

KEYS_ENV = "STREAM_TTS_API_KEYS"
TOKEN_PREFIX = "st1."
TOKEN_SCOPE = "stream"
MAX_TOKEN_TTL_S = 900
MIN_KEY_CHARS = 16


class Policy(enum.Enum):
    """What a route needs: nothing, a key or a streaming token, or a key."""

    OPEN = "open"
    STREAM = "stream"
    KEY = "key"


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``key_id`` names the key (never the key itself); "" = anonymous."""

    key_id: str
    via: str  # "key" | "token" | "anonymous"

    @property
    def anonymous(self) -> bool:
        return not self.key_id


ANONYMOUS = Principal("", "anonymous")

# Read-only routes a browser page needs next to /v1/stream: a streaming token opens them too.
_STREAM_HTTP = frozenset({"/v1/info", "/v1/voices", "/v1/overlay/queue"})
_STREAM_WS = frozenset({"/v1/stream", "/v1/overlay/events"})
# WebSockets that are not synthesis sessions (no SessionLease).
_NOT_SESSIONS = frozenset({"/v1/overlay/events"})
# HTTP routes that synthesize for as long as they answer: they hold a SessionLease too.
_SESSION_HTTP = frozenset({"/v1/audio/speech"})
# ElevenLabs WebSockets may carry the key in their first message (``xi_api_key``).
KEY_IN_MESSAGE_PREFIX = "/v1/text-to-speech/"
_OVERLAY_WRITE_PREFIX = "/v1/overlay/"


def key_id_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def load_api_keys(path: str, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Keys from ``path`` ("" = none) and ``STREAM_TTS_API_KEYS``, deduplicated, in order.

    Raises:
        ConfigError: unreadable file, or a key that is too short, has spaces or looks like a token.
    """
    env = os.environ if environ is None else environ
    keys: list[str] = []
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read server.api_keys_file {path}: {exc.strerror}") from None
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    keys += [k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    for n, key in enumerate(keys, 1):
        where = f"API key #{n} ({key_id_of(key)})"  # never the key itself
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{where} is shorter than {MIN_KEY_CHARS} characters")
        if any(c.isspace() for c in key) or key.startswith(TOKEN_PREFIX):
            raise ConfigError(f"{where} contains spaces or starts with {TOKEN_PREFIX!r}")
    return tuple(dict.fromkeys(keys))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Bucket:
    """Token bucket: ``per_minute`` requests, refilled evenly; memory O(1) per key."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate_s = per_minute / 60.0
        self.level = self.capacity
        self.t = now

    def take(self, now: float) -> float:
        """0 when admitted, else the seconds until one request is allowed."""
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate_s)
        self.t = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate_s


class SharedLimits(Protocol):
    """Per-key limits kept outside this process, shared by several server replicas (Ray Serve:
    ``stream_server.ray_serve``). Same limits and errors as ``AccessControl.admit`` / ``lease``."""

    async def admit(self, key_id: str) -> None:
        """Raises ``AccessError`` (``rate_limited``)."""
        ...

    async def lease(self, key_id: str) -> str:
        """A lease id; raises ``AccessError`` (``too_many_sessions``)."""
        ...

    async def release(self, lease_id: str) -> None: ...


class SessionLease:
    """One open session counted against its key; ``release()`` is idempotent."""

    def __init__(self, owner: AccessControl | None, key_id: str) -> None:
        self._owner = owner
        self.key_id = key_id

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self.key_id)


class AccessControl:
    """Keys, tokens, limits and Origins of one app. Call from the event loop only (no locks).

    Args:
        cfg: the server config (limits, token secret and lifetime, allowed origins).
        keys: the API keys (``load_api_keys``); empty = access control off.
        clock: wall-clock seconds (token expiry); tests pass a fake.
        monotonic: seconds for rate limits.
    """

    def __init__(
        self,
        cfg: ServerConfig,
        keys: tuple[str, ...],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._digests = {key_id_of(k): hashlib.sha256(k.encode()).digest() for k in keys}
        legacy = cfg.overlay_api_key
        self._overlay_digest = hashlib.sha256(legacy.encode()).digest() if legacy else None
        self._secret = cfg.token_secret.encode() if cfg.token_secret else secrets.token_bytes(32)
        self._origins = {o.rstrip("/").lower() for o in cfg.allowed_origins}
        self._clock = clock
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._sessions: dict[str, int] = {}
        # set by a host running several replicas: the per-key limits then live there
        self.shared: SharedLimits | None = None

    @classmethod
    def from_config(cls, cfg: ServerConfig, environ: Mapping[str, str] | None = None) -> AccessControl:
        return cls(cfg, load_api_keys(cfg.api_keys_file, environ))

    @property
    def enabled(self) -> bool:
        """True when API keys are configured (otherwise every route is open)."""
        return bool(self._digests)

    @property
    def key_count(self) -> int:
        return len(self._digests)

    def now(self) -> float:
        """Wall-clock seconds (token expiry)."""
        return self._clock()

    # ------------------------------------------------------------------ who

    def check_key(self, key: str | None) -> Principal:
        """The principal of an API key; with access control off, anyone is ``ANONYMOUS``.

        Raises:
            AccessError: ``unauthorized`` (401) for a missing or unknown key.
        """
        if not self.enabled:
            return ANONYMOUS
        digest = hashlib.sha256((key or "").encode()).digest()
        found = ""
        for key_id, known in self._digests.items():  # no early exit: time does not tell which
            if hmac.compare_digest(digest, known):
                found = key_id
        if not key or not found:
            raise AccessError("unauthorized", "missing or invalid API key", 401)
        return Principal(found, "key")

    def check_overlay_key(self, key: str | None) -> bool:
        """True for the legacy ``overlay_api_key`` (accepted on POST /v1/overlay/* only)."""
        if self._overlay_digest is None or not key:
            return False
        return hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self._overlay_digest)

    def mint_token(self, principal: Principal, ttl_s: float | None = None) -> tuple[str, int]:
        """A streaming token for ``principal``; returns (token, expiry in unix seconds)."""
        ttl = self.cfg.token_ttl_s if ttl_s is None else ttl_s
        expires = int(self._clock() + min(ttl, MAX_TOKEN_TTL_S))
        payload = _b64(json.dumps({"k": principal.key_id, "s": TOKEN_SCOPE, "e": expires}).encode())
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}", expires

    def check_token(self, token: str) -> Principal:
        """The principal a token was minted for.

        Raises:
            AccessError: ``invalid_token`` (malformed, tampered, wrong scope or a removed key),
                ``token_expired``; both 401.
        """
        invalid = AccessError("invalid_token", "invalid token", 401)
        if not token.startswith(TOKEN_PREFIX) or len(token) > 512:
            raise invalid
        payload, _, signature = token[len(TOKEN_PREFIX):].partition(".")
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            raise invalid
        try:
            claims = json.loads(_unb64(payload))
        except (binascii.Error, ValueError):
            raise invalid from None
        if not isinstance(claims, dict) or claims.get("s") != TOKEN_SCOPE:
            raise invalid
        key_id, expires = claims.get("k"), claims.get("e")
        if not isinstance(key_id, str) or not isinstance(expires, int):
            raise invalid
        if self.enabled and key_id not in self._digests:
            raise invalid
        if expires <= self._clock():
            raise AccessError("token_expired", "the token has expired; mint a new one", 401)
        return Principal(key_id, "token") if key_id else ANONYMOUS

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, (TOKEN_PREFIX + payload).encode(), hashlib.sha256).digest())

    # ------------------------------------------------------------------ where

    def policy(self, path: str, *, websocket: bool, method: str = "GET") -> Policy:
        """What ``path`` needs: the same answer whether access control is on or off."""
        if path == "/metrics":
            return Policy.OPEN if self.cfg.metrics_public else Policy.KEY
        if not path.startswith("/v1/"):
            return Policy.OPEN  # /healthz, the demo pages and their assets, the OpenAPI docs
        if websocket:
            return Policy.STREAM if path in _STREAM_WS else Policy.KEY
        if method in ("GET", "HEAD") and path in _STREAM_HTTP:
            return Policy.STREAM
        return Policy.KEY

    @staticmethod
    def is_session(path: str, *, websocket: bool) -> bool:
        """Does a request on ``path`` hold a session lease for as long as it lasts?"""
        return path not in _NOT_SESSIONS if websocket else path in _SESSION_HTTP

    @staticmethod
    def accepts_overlay_key(path: str, method: str) -> bool:
        return method == "POST" and path.startswith(_OVERLAY_WRITE_PREFIX)

    def check_origin(self, origin: str | None, host: str | None) -> None:
        """Allow no Origin (not a browser), the same host, or one of ``allowed_origins``.

        Raises:
            AccessError: ``forbidden_origin`` (403).
        """
        if origin is None:
            return
        normalized = origin.rstrip("/").lower()
        if "*" in self._origins or normalized in self._origins:
            return
        netloc = urlsplit(normalized).netloc if "://" in normalized else ""
        if netloc and host and netloc == host.lower():
            return
        raise AccessError("forbidden_origin", "this Origin is not allowed", 403)

    # ------------------------------------------------------------------ how much

    def admit(self, principal: Principal) -> None:
        """Count one request (or session open) against the key's per-minute budget.

        Raises:
            AccessError: ``rate_limited`` (429, ``retry_after_s`` set).
        """
        per_minute = self.cfg.key_requests_per_minute
        if principal.anonymous or per_minute <= 0:
            return
        now = self._monotonic()
        bucket = self._buckets.get(principal.key_id)
        if bucket is None:
            bucket = self._buckets[principal.key_id] = _Bucket(per_minute, now)
        wait_s = bucket.take(now)
        if wait_s > 0:
            raise AccessError(
                "rate_limited",
                f"more than {per_minute} requests per minute for this key",
                429,
                retry_after_s=max(1, math.ceil(wait_s)),
            )

    def lease(self, principal: Principal) -> SessionLease:
        """Count one open session against the key.

        Raises:
            AccessError: ``too_many_sessions`` (429, ``retry_after_s`` 1).
        """
        limit = self.cfg.key_max_sessions
        if principal.anonymous or limit <= 0:
            return SessionLease(None, "")
        open_now = self._sessions.get(principal.key_id, 0)
        if open_now >= limit:
            raise AccessError(
                "too_many_sessions",
                f"this key already has {limit} sessions open",
                429,
                retry_after_s=1,
            )
        self._sessions[principal.key_id] = open_now + 1
        return SessionLease(self, principal.key_id)

    def open_sessions(self, key_id: str) -> int:
        return self._sessions.get(key_id, 0)

    def _release(self, key_id: str) -> None:
        left = self._sessions.get(key_id, 0) - 1
        if left > 0:
            self._sessions[key_id] = left
        else:
            self._sessions.pop(key_id, None)
