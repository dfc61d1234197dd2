"""HTTP routes that add and remove F5 voices: ``POST /v1/voices`` and ``DELETE /v1/voices/{name}``.

``GET /v1/voices`` lives with the rest of the app; these two only exist for engines with a voice
store (F5). Errors are JSON ``{"type": "error", "code": ..., "message": ...}`` like on the socket.

The upload is read through a byte-counting ``receive`` so a client cannot make the server buffer
more than the store's limit (plus room for the form fields); decoding and file writes run in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from engine.base import UnknownVoiceError
from engine.f5.voices import VoiceError, VoiceExistsError, VoiceStore, VoiceTooLargeError
from stream_server.errors import error_responses

__all__ = ["create_voice_router"]

log = logging.getLogger(__name__)

# Multipart boundaries, part headers and the name/text fields on top of the audio bytes.
FORM_OVERHEAD_BYTES = 64 * 1024

_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "text", "audio"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "text": {"type": "string", "description": "transcript of the clip"},
                        "audio": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


class _BodyTooLarge(Exception):
    pass


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "code": code, "message": message}, status_code=status)


def _capped_receive(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]], limit: int
) -> Callable[[], Awaitable[MutableMapping[str, Any]]]:
    """``receive`` that raises ``_BodyTooLarge`` once the request body passes ``limit`` bytes."""
    seen = 0

    async def wrapped() -> MutableMapping[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return wrapped


def create_voice_router(get_store: Callable[[], VoiceStore | None]) -> APIRouter:
    """Router with the voice upload and delete routes.

    Args:
        get_store: returns the engine's ``VoiceStore``, or None when the engine has no custom
            voices (eSpeak); called per request, so it may change when the engine does.
    """
    router = APIRouter()

    def not_supported() -> JSONResponse:
        return _error(409, "voices_not_supported", "this engine does not support custom voices")

    @router.post(
        "/v1/voices", status_code=201, openapi_extra=_UPLOAD_SCHEMA, responses=error_responses(400, 409, 413)
    )
    async def upload_voice(request: Request) -> Response:
        """Add a voice from a multipart form: ``name``, ``text`` (transcript), ``audio`` (file)."""
        store = get_store()
        if store is None:
            return not_supported()
        too_large = _error(
            413, VoiceTooLargeError.code, f"audio is larger than {store.max_upload_bytes} bytes"
        )
        limit = store.max_upload_bytes + FORM_OVERHEAD_BYTES
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large
        capped = Request(request.scope, _capped_receive(request.receive, limit))
        try:
            form = await capped.form(max_files=1, max_fields=8)
        except _BodyTooLarge:
            return too_large
        except Exception as exc:  # a malformed body is the client's error, not ours
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            return _error(400, VoiceError.code, f"invalid multipart form: {detail}")
        try:
            name, text, audio = form.get("name"), form.get("text"), form.get("audio")
            if not isinstance(name, str) or not isinstance(text, str):
                return _error(400, VoiceError.code, "form fields 'name' and 'text' are required")
            if not isinstance(audio, UploadFile):
                return _error(400, VoiceError.code, "form file 'audio' is required")
            audio_bytes = await audio.read(store.max_upload_bytes + 1)
            if len(audio_bytes) > store.max_upload_bytes:
                return too_large
            voice = await asyncio.to_thread(store.add, name, audio_bytes, text)
        except VoiceExistsError as exc:
            return _error(409, exc.code, str(exc))
        except VoiceTooLargeError as exc:
            return _error(413, exc.code, str(exc))
        except VoiceError as exc:
            return _error(400, exc.code, str(exc))
        finally:
            await form.close()
        log.info("voice %r added (%.2f s of reference audio)", voice.name, voice.duration_s)
        return JSONResponse(
            {"name": voice.name, "duration_s": round(voice.duration_s, 3)}, status_code=201
        )

    @router.delete("/v1/voices/{name}", status_code=204, responses=error_responses(404, 409))
    async def delete_voice(name: str) -> Response:
        """Remove a voice's files from the voices folder."""
        store = get_store()
        if store is None:
            return not_supported()
        try:
            await asyncio.to_thread(store.remove, name)
        except UnknownVoiceError as exc:
            return _error(404, exc.code, str(exc))
        log.info("voice %r removed", name)
        return Response(status_code=204)

    return router
