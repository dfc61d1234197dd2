"""State that every Ray Serve replica of stream-tts shares, held in named Ray actors.

- ``OverlayActorImpl`` / ``RayOverlay``: the overlay queue (``POST /v1/overlay/say`` on any replica
  reaches the pages connected to any replica, in order); replicas long-poll it for their pages.
- ``ClusterStateImpl`` / ``RaySharedLimits``: which replicas are up and where their metrics are,
  and the per-key limits all replicas share (``auth.SharedLimits``).

The actor classes are plain Python (tested without Ray); Ray is imported only in ``_named_actor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from stream_server.auth import _Bucket
from stream_server.config import AppConfig, ServerConfig
from stream_server.errors import AccessError
from stream_server.overlay import LocalOverlay, OverlayError, OverlayItem, OverlayQueue

NAMESPACE = "stream-tts"
OVERLAY_ACTOR = "stream-tts-overlay"
DIRECTORY_ACTOR = "stream-tts-replicas"
_REPLICA_TTL_S = 30.0  # a replica missing this many seconds of health checks leaves the directory
_POLL_S = 5.0  # overlay pages long-poll the actor this long
_LISTENER_TTL_S = 3 * _POLL_S  # a page whose replica stopped polling is forgotten after this


# ---------------------------------------------------------------------------------------- overlay
class OverlayActorImpl:
    """The overlay queue shared by every replica (run as a named Ray actor, async methods).

    Pages connect to replicas; each replica long-polls this actor for its pages' events. A page
    whose replica stops polling (the replica died) is forgotten after ``_LISTENER_TTL_S``.
    """

    def __init__(self, max_pending: int, max_chars: int) -> None:
        self.overlay = LocalOverlay(OverlayQueue(max_pending, max_chars))
        self._last_poll: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _ensure_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(_POLL_S)
            cutoff = self._now() - _LISTENER_TTL_S
            for listener, seen in list(self._last_poll.items()):
                if seen < cutoff:
                    self._last_poll.pop(listener, None)
                    await self.overlay.disconnect(listener)

    async def call(self, method: str, *args: Any) -> tuple[str, Any]:
        """Run a queue method; returns ("ok", result) or ("error", (status, code, message))."""
        if method not in ("say", "skip", "clear", "snapshot", "played"):
            raise ValueError(f"unknown overlay method {method!r}")
        try:
            result = await getattr(self.overlay, method)(*args)
        except OverlayError as exc:
            return "error", (exc.status, exc.code, exc.message)
        if method == "say":
            item, position = result
            return "ok", ((item.id, item.text, item.voice, item.author), position)
        return "ok", result

    async def connect(self) -> str:
        self._ensure_reaper()
        listener = await self.overlay.connect()
        self._last_poll[listener] = self._now()
        return listener

    async def poll(self, listener: str, timeout_s: float) -> list[dict[str, str]]:
        """Events for the page, waiting up to ``timeout_s`` for the first one."""
        self._last_poll[listener] = self._now()
        events = self.overlay.pending_events(listener)
        if events:
            return events
        with contextlib.suppress(asyncio.TimeoutError):
            first = await asyncio.wait_for(self.overlay.next_event(listener), timeout_s)
            events = [first, *self.overlay.pending_events(listener)]
        if listener in self._last_poll:
            self._last_poll[listener] = self._now()
        return events

    async def disconnect(self, listener: str) -> None:
        self._last_poll.pop(listener, None)
        await self.overlay.disconnect(listener)


class RayOverlay:
    """`OverlayBackend` that forwards to the named overlay actor (used inside replicas)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._events: dict[str, deque[dict[str, str]]] = {}

    async def _call(self, method: str, *args: Any) -> Any:
        status, value = await self.actor.call.remote(method, *args)
        if status == "error":
            raise OverlayError(*value)
        return value

    async def say(self, text: str, voice: str, author: str) -> tuple[OverlayItem, int]:
        fields, position = await self._call("say", text, voice, author)
        return OverlayItem(*fields), position

    async def skip(self) -> str | None:
        return await self._call("skip")

    async def clear(self) -> tuple[int, str | None]:
        removed, skipped = await self._call("clear")
        return removed, skipped

    async def snapshot(self) -> dict[str, Any]:
        return await self._call("snapshot")

    async def connect(self) -> str:
        listener: str = await self.actor.connect.remote()
        self._events[listener] = deque()
        return listener

    async def next_event(self, listener: str) -> dict[str, str]:
        events = self._events.setdefault(listener, deque())
        while not events:
            events.extend(await self.actor.poll.remote(listener, _POLL_S))
        return events.popleft()

    async def played(self, item_id: str) -> None:
        await self._call("played", item_id)

    async def disconnect(self, listener: str) -> None:
        self._events.pop(listener, None)
        with contextlib.suppress(Exception):  # the actor may be gone at shutdown
            await self.actor.disconnect.remote(listener)


def overlay_actor(config: AppConfig) -> Any:
    """The named overlay actor, created on first use."""
    s = config.server
    return _named_actor(OverlayActorImpl, OVERLAY_ACTOR, s.overlay_queue_size, s.overlay_max_chars)


# ---------------------------------------------------------------------------------------- directory
class ClusterStateImpl:
    """State of the whole deployment (a named actor): which replicas are up and where their
    metrics are (refreshed by each replica's health check; a replica silent ``_REPLICA_TTL_S``
    drops out), and the per-key limits all replicas share (``auth.SharedLimits``); the session
    leases of a replica that dropped out are released with it. The limits come with each call
    (the replica's config), so a redeploy with new limits applies at once."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[dict[str, str], float]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._sessions: dict[str, int] = {}
        self._leases: dict[str, tuple[str, str]] = {}  # lease id -> (replica, key id)
        self._ids = itertools.count(1)

    def heartbeat(self, replica: str, info: dict[str, str]) -> None:
        self._entries[replica] = (info, time.monotonic())

    def remove(self, replica: str) -> None:
        self._entries.pop(replica, None)
        self._drop_leases({replica})

    def replicas(self) -> list[dict[str, str]]:
        self._expire()
        return [{"replica": k, **info} for k, (info, _) in sorted(self._entries.items())]

    def admit(self, key_id: str, per_minute: int) -> tuple[str, Any]:
        """("ok", None) or ("error", (code, message, status, retry_after_s))."""
        if per_minute <= 0:
            return "ok", None
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.capacity != per_minute:
            bucket = self._buckets[key_id] = _Bucket(per_minute, now)
        wait_s = bucket.take(now)
        if wait_s > 0:
            message = f"more than {per_minute} requests per minute for this key"
            return "error", ("rate_limited", message, 429, max(1, math.ceil(wait_s)))
        return "ok", None

    def lease(self, replica: str, key_id: str, limit: int) -> tuple[str, Any]:
        """("ok", lease id) or ("error", ...) as ``admit``."""
        self._expire()
        open_now = self._sessions.get(key_id, 0)
        if limit > 0 and open_now >= limit:
            message = f"this key already has {limit} sessions open"
            return "error", ("too_many_sessions", message, 429, 1)
        self._sessions[key_id] = open_now + 1
        lease_id = f"{replica}:{next(self._ids)}"
        self._leases[lease_id] = (replica, key_id)
        return "ok", lease_id

    def release(self, lease_id: str) -> None:
        entry = self._leases.pop(lease_id, None)
        if entry is not None:
            key_id = entry[1]
            left = self._sessions.get(key_id, 0) - 1
            if left > 0:
                self._sessions[key_id] = left
            else:
                self._sessions.pop(key_id, None)

    def open_sessions(self, key_id: str) -> int:
        return self._sessions.get(key_id, 0)

    def _expire(self) -> None:
        cutoff = time.monotonic() - _REPLICA_TTL_S
        gone = {k for k, (_, seen) in self._entries.items() if seen < cutoff}
        for replica in gone:
            del self._entries[replica]
        self._drop_leases(gone)

    def _drop_leases(self, replicas: set[str]) -> None:
        for lease_id, (replica, _) in list(self._leases.items()):
            if replica in replicas:
                self.release(lease_id)


class RaySharedLimits:
    """``auth.SharedLimits`` over the cluster-state actor (one per replica)."""

    def __init__(self, actor: Any, replica: str, server: ServerConfig) -> None:
        self.actor = actor
        self.replica = replica
        self.per_minute = server.key_requests_per_minute
        self.max_sessions = server.key_max_sessions

    @staticmethod
    def _check(status: str, value: Any) -> Any:
        if status == "error":
            code, message, http_status, retry = value
            raise AccessError(code, message, http_status, retry_after_s=retry)
        return value

    async def admit(self, key_id: str) -> None:
        self._check(*await self.actor.admit.remote(key_id, self.per_minute))

    async def lease(self, key_id: str) -> str:
        lease_id: str = self._check(
            *await self.actor.lease.remote(self.replica, key_id, self.max_sessions)
        )
        return lease_id

    async def release(self, lease_id: str) -> None:
        with contextlib.suppress(Exception):  # the actor may be gone at shutdown
            await self.actor.release.remote(lease_id)


def _named_actor(cls: type, name: str, *args: Any) -> Any:
    """Get or create a named, detached helper actor (it outlives any one replica)."""
    import ray

    actor_cls: Any = ray.remote(num_cpus=0, max_restarts=-1)(cls)
    return actor_cls.options(
        name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(*args)


def directory_router(directory: Any) -> APIRouter:
    """``GET /v1/replicas`` (who serves, where each replica's metrics are) and
    ``GET /v1/replicas/prometheus`` (the same as Prometheus HTTP service discovery targets)."""
    router = APIRouter()

    @router.get("/v1/replicas")
    async def replicas() -> JSONResponse:
        return JSONResponse({"replicas": await directory.replicas.remote()})

    @router.get("/v1/replicas/prometheus")
    async def prometheus_targets() -> JSONResponse:
        entries = await directory.replicas.remote()
        return JSONResponse([
            {"targets": [e["metrics"]], "labels": {"replica": e["replica"], "job": "stream-tts"}}
            for e in entries
        ])

    return router
