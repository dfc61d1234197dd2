"""The ElevenLabs-compatible WebSocket routes: connection checks, then ``ElevenLabsConnection``.

``register_elevenlabs_routes(app, hub)`` adds ``/v1/text-to-speech/{voice_id}/stream-input`` and
``/v1/text-to-speech/{voice_id}/multi-stream-input``. Before a connection starts: the query is
validated, the server's capacity checked, and the access-control hook (``first_message_auth``) asked
whether the first message must carry the key. The voice is looked up only once the caller is
authenticated: at once when a header key was accepted (or access control is off), else after the
first message's key, so a client without a valid key cannot probe which voice ids exist.
"""

from __future__ import annotations

import contextlib
import dataclasses

from fastapi import FastAPI, WebSocket

from stream_server.api.elevenlabs_context import error_message
from stream_server.api.elevenlabs_protocol import ErrorMessage, encode_server_message
from stream_server.api.elevenlabs_query import ElevenLabsError, parse_query
from stream_server.api.elevenlabs_ws import ElevenLabsConnection, KeyCheck, resolve_voice
from stream_server.auth_asgi import request_auth
from stream_server.connection import Hub
from stream_server.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    AccessError,
)


def first_message_auth(ws: WebSocket) -> KeyCheck | None:
    """Access-control hook: how to authenticate the key of this socket's first message.

    ``stream_server.auth_asgi`` checks the ``xi-api-key`` / ``Authorization`` header before the
    route runs; an ElevenLabs socket without one is let in *pending*, and its first message's
    ``xi_api_key`` / ``xi-api-key`` / ``authorization`` must complete it. Returns None when nothing
    is pending (a header key was accepted, or access control is off), else a function that raises
    ``ElevenLabsError`` for a refused key.
    """
    auth = request_auth(ws)
    if not auth.pending:
        return None

    def complete(key: str | None) -> None:
        try:
            auth.complete(key)
        except AccessError as exc:
            close = exc.kind.close_code or CLOSE_POLICY_VIOLATION
            raise ElevenLabsError(exc.code, exc.message, close_code=close) from None

    return complete


async def _refuse(ws: WebSocket, error: ErrorMessage) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(encode_server_message(error))
        await ws.close(error.code, error.error)


async def _serve(hub: Hub, ws: WebSocket, voice_id: str, *, multi: bool) -> None:
    await ws.accept()
    try:
        params = parse_query(voice_id, ws.query_params.multi_items(), multi=multi)
        if hub.config.server.elevenlabs_alignment == "always":
            params = dataclasses.replace(params, sync_alignment=True)
        check_key = first_message_auth(ws)
        # an unauthenticated socket learns nothing about voices: looked up after its key
        voice = resolve_voice(hub, params.voice_id) if check_key is None else None
        if hub.shutting_down:
            raise ElevenLabsError("shutting_down", "server is shutting down", close_code=CLOSE_GOING_AWAY)
        if len(hub.connections) >= hub.config.server.max_sessions:
            hub.metrics.rejected_sessions.inc()
            raise ElevenLabsError("overloaded", "too many sessions; try again later", close_code=CLOSE_TRY_AGAIN_LATER)
    except ElevenLabsError as exc:
        hub.metrics.observe_error(exc.error)
        await _refuse(ws, error_message(exc))
        return
    conn = ElevenLabsConnection(hub, ws, params, voice, check_key=check_key)
    await conn.run()


def register_elevenlabs_routes(app: FastAPI, hub: Hub) -> None:
    """Add the two ElevenLabs-compatible WebSocket routes to ``app``."""

    @app.websocket("/v1/text-to-speech/{voice_id}/stream-input")
    async def stream_input(websocket: WebSocket, voice_id: str) -> None:
        await _serve(hub, websocket, voice_id, multi=False)

    @app.websocket("/v1/text-to-speech/{voice_id}/multi-stream-input")
    async def multi_stream_input(websocket: WebSocket, voice_id: str) -> None:
        await _serve(hub, websocket, voice_id, multi=True)

