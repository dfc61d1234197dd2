"""OpenAI-compatible speech routes: ``POST /v1/audio/speech``, ``GET /v1/models``,
``GET /v1/audio/voices`` (docs/INTEGRATIONS.md shows clients; docs/PROTOCOL.md the details).

The speech route streams: the text goes through a ``SpeechStream`` (the same session, chunker and
scheduler as ``/v1/stream``), the response starts with the first synthesized audio, and every batch
of PCM is encoded (``SpeechEncoder``, on a worker thread: never on the event loop) and written at
once. An MP3 body at the engine's tempo is encoded by the engine workers instead, segment by
segment next to the synthesis (the session speaks ``mp3``; the frames pass through): on every
core, and without this process's GIL, which 16 concurrent MP3 encodes here turned into the
bottleneck. The response status is decided by the first event: audio gives 200, an error before
any audio gives its OpenAI-shaped error. A segment that fails later is skipped (``audio``; logged) or
reported as an ``error`` event (``sse``), as a ``/v1/stream`` session reports it and goes on.

``create_openai_router(hub, dependencies=...)``: route-level FastAPI dependencies are the hook for
access control; their ``HTTPException``s come out in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from stream_server.api.audio_encode import SPEECH_FORMATS, SpeechEncoder
from stream_server.api.openai_errors import ERROR_RESPONSES, OpenAIError, OpenAIRoute
from stream_server.api.openai_schema import (
    OPENAI_VOICES,
    SpeechRequest,
    model_names,
    parse_aliases,
    plan_speed,
    resolve_voice,
)
from stream_server.api.speech_stream import AudioBatch, SpeechStream, StreamFailure
from stream_server.connection import Hub

log = logging.getLogger("stream_server")

_SSE_TYPE = "text/event-stream"
_STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
_OUTPUT_FRAME_S = 0.02  # usage.output_tokens counts 20 ms frames of audio
_Pieces = AsyncGenerator[bytes | StreamFailure, None]
# PCM per encoder call (s16le at 24 kHz): 40 ms until the response's first bytes are out (MP3 and
# AAC need 80-100 ms of audio before they emit a frame), then 200 ms. PyAV keeps the GIL while it
# encodes, so a call is also the longest the event loop can be held up (~5 ms of CPU for MP3).
_FIRST_SLICE_BYTES = 2 * 960
_SLICE_BYTES = 2 * 4800
_SILENCE_BYTES = 2 * 2400
_BULK_NICE = 10  # nice value of the bulk encoder thread (see _background_priority)  # 100 ms: the answer to an input with nothing to speak


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "stream-tts"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class VoiceCard(BaseModel):
    id: str
    name: str
    language: str = ""
    description: str = ""


class VoiceList(BaseModel):
    voices: list[VoiceCard]
    default: str
    aliases: dict[str, str]  # OpenAI voice name -> our voice


def _speech_responses() -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content: dict[str, Any] = {f.content_type: binary for f in SPEECH_FORMATS.values()}
    content[_SSE_TYPE] = {"schema": {"type": "string"}}
    doc = ("The audio, streamed as it is synthesized (chunked). With stream_format=sse: "
           "`speech.audio.delta` events with base64 audio, then `speech.audio.done` with usage.")
    return {200: {"description": doc, "content": content}, **ERROR_RESPONSES}


class _ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always runs ``on_close`` (done, failed or client gone)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def _encoded(stream: SpeechStream, encoder: SpeechEncoder,
                   opened: Awaitable[None] | None = None,
                   pools: tuple[concurrent.futures.Executor, concurrent.futures.Executor] | None = None) -> _Pieces:
    """Body pieces in order; a failure before any audio raises its ``OpenAIError`` instead.

    A precoded batch (``encoder.session_format``) passes through. Otherwise a batch is encoded in
    slices: the first slice of the response is short, so its first bytes do not wait for a whole
    engine chunk to be encoded (about 2 % of the audio time for MP3 at LAME's default quality).
    ``pools`` = (first, bulk): slices before the first bytes run on the first pool, so they do not
    queue behind other responses' bulk encoding; the bulk pool (one thread) caps what encoding
    takes from the engine and the event loop when many responses run at once.
    """
    first_pool, bulk_pool = pools if pools is not None else (None, None)
    loop = asyncio.get_running_loop()
    started = False
    async for event in stream.batches():
        if isinstance(event, StreamFailure):
            if not started:
                raise OpenAIError.from_code(event.code, event.message)
            yield event
            continue
        batch: AudioBatch = event
        if encoder.session_format is not None:  # the engine workers encoded it
            out = encoder.precoded(batch.data, batch.audio_s)
            if out:
                started = True
                yield out
        elif encoder.passthrough:
            out = encoder.encode(batch.data)
            if out:
                started = True
                yield out
        else:
            if opened is not None:
                await opened
                opened = None
            pos = 0
            while pos < len(batch.data):
                if started:
                    piece = batch.data[pos : pos + _SLICE_BYTES]
                    out = await loop.run_in_executor(bulk_pool, encoder.encode, piece)
                    pos += len(piece)
                else:  # one hop to the thread pool, not one per slice (each waits for the loop)
                    out, used = await loop.run_in_executor(first_pool, _first_bytes, encoder, batch.data[pos:])
                    pos += used
                if out:
                    started = True
                    yield out
        stream.written(batch)  # after the yields: the pieces have been sent
    if opened is not None:  # no audio came: the codec may still be opening on its thread
        await opened
    if encoder.samples_in == 0:  # nothing speakable (only emoji or punctuation): a valid, short file
        silence = bytes(_SILENCE_BYTES)
        out = encoder.encode(silence) if encoder.passthrough else await loop.run_in_executor(
            bulk_pool, encoder.encode, silence)
        if out:
            yield out
    tail = encoder.finish() if encoder.inline else await loop.run_in_executor(bulk_pool, encoder.finish)
    if tail:
        yield tail


async def _audio_body(pieces: _Pieces, sid: str) -> AsyncGenerator[bytes, None]:
    async for piece in pieces:
        if isinstance(piece, StreamFailure):
            log.warning("speech %s: a segment failed (%s: %s); its audio is skipped", sid, piece.code,
                        piece.message)
            continue
        yield piece


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _sse_body(pieces: _Pieces, encoder: SpeechEncoder,
                    n_chars: int) -> AsyncGenerator[bytes, None]:
    async for piece in pieces:
        if isinstance(piece, StreamFailure):
            error = OpenAIError.from_code(piece.code, piece.message)
            yield _sse({"type": "error", "error": {"message": error.message, "type": "server_error",
                                                   "param": None, "code": piece.code}})
            continue
        yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode("ascii")})
    output = math.ceil(encoder.samples_out / encoder.sample_rate / _OUTPUT_FRAME_S)
    usage = {"input_tokens": n_chars, "output_tokens": output, "total_tokens": n_chars + output}
    yield _sse({"type": "speech.audio.done", "usage": usage})


async def _first_and_rest(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    if first:
        yield first
    async for piece in rest:
        yield piece


def _first_bytes(encoder: SpeechEncoder, pcm: bytes) -> tuple[bytes, int]:
    """Encode ``pcm`` in short slices until the encoder emits its first bytes (MP3 and AAC need
    80-100 ms of audio first): (bytes, PCM bytes used). Runs on an encoder thread."""
    pos = 0
    out = b""
    while pos < len(pcm) and not out:
        piece = pcm[pos : pos + _FIRST_SLICE_BYTES]
        out = encoder.encode(piece)
        pos += len(piece)
    return out, pos


def create_openai_router(hub: Hub, *, dependencies: Sequence[Any] = ()) -> APIRouter:
    """The OpenAI-compatible routes; ``dependencies`` guard all of them (e.g. an API-key check)."""
    router = APIRouter(route_class=OpenAIRoute, dependencies=list(dependencies), tags=["openai"])
    server = hub.config.server
    aliases = parse_aliases(server.openai_voice_aliases)
    streams: set[SpeechStream] = set()
    # encoder threads (see _encoded); idle threads exit when the router is collected
    first_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="speech-first-audio")
    bulk_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="speech-encode")

    def check_capacity() -> None:
        if hub.shutting_down:
            raise OpenAIError.from_code("shutting_down", "The server is shutting down.")
        if not hub.warm:
            raise OpenAIError(503, "The server is warming up; try again shortly.", code="warming_up",
                              headers={"Retry-After": "2"})
        if len(hub.connections) + len(streams) >= server.max_sessions:
            hub.metrics.rejected_sessions.inc()
            raise OpenAIError.from_code("overloaded", "Too many sessions; try again later.")

    @router.post("/v1/audio/speech", response_class=Response, responses=_speech_responses(),
                 summary="Create speech (OpenAI-compatible, streamed)")
    async def create_speech(body: SpeechRequest) -> Response:
        check_capacity()
        engine = hub.require_engine()
        limit = min(server.openai_max_input_chars, server.max_session_chars)  # one session's text
        if len(body.input) > limit:
            raise OpenAIError(400, f"'input' is longer than {limit} characters.",
                              param="input", code="string_above_max_length")
        if not body.input.strip():
            raise OpenAIError(400, "'input' has nothing to speak.", param="input", code="invalid_value")
        if body.model not in model_names(engine.name):
            raise OpenAIError(404, f"The model '{body.model}' does not exist; see GET /v1/models.",
                              param="model", code="model_not_found")
        ours = hub.engine_info().voice_names()
        voice = resolve_voice(body.voice, ours, engine.default_voice, aliases)
        plan = plan_speed(body.speed)
        sid = "oa-" + uuid.uuid4().hex[:12]
        encoder = SpeechEncoder(body.response_format, tempo=plan.tempo,
                                mp3_quality=hub.config.audio.mp3_quality)
        stream = SpeechStream(hub, sid)
        streams.add(stream)
        # the codec opens on a thread while the engine makes the first audio
        opened = None if encoder.passthrough or encoder.session_format else asyncio.ensure_future(
            asyncio.get_running_loop().run_in_executor(first_pool, encoder.open))
        pieces = _encoded(stream, encoder, opened, (first_pool, bulk_pool))
        sse = body.stream_format == "sse"
        body_iter = _sse_body(pieces, encoder, len(body.input)) if sse else _audio_body(pieces, sid)

        async def on_close() -> None:
            if opened is not None and not opened.done():
                await asyncio.wait([opened])  # the encoder is in use on its thread until then
            await body_iter.aclose()
            await pieces.aclose()
            stream.close()
            streams.discard(stream)

        try:
            if encoder.session_format is None:
                stream.begin(body.input, voice, plan.engine_speed)
            else:
                stream.begin(body.input, voice, plan.engine_speed, fmt=encoder.session_format,
                             bitrate=encoder.format.bit_rate)
            try:
                first = await anext(body_iter)
            except StopAsyncIteration:
                first = b""
        except BaseException:
            await on_close()
            raise
        media_type = _SSE_TYPE if sse else SPEECH_FORMATS[body.response_format].content_type
        return _ClosingStreamingResponse(_first_and_rest(first, body_iter), on_close,
                                         media_type=media_type, headers=_STREAM_HEADERS)

    @router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES,
                summary="Models (OpenAI-compatible): the engine and the accepted OpenAI names")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in model_names(hub.require_engine().name)])

    @router.get("/v1/models/{model_id}", response_model=ModelCard, responses=ERROR_RESPONSES,
                summary="One model (OpenAI-compatible)")
    async def get_model(model_id: str) -> ModelCard:
        if model_id not in model_names(hub.require_engine().name):
            raise OpenAIError(404, f"The model '{model_id}' does not exist.", param="model",
                              code="model_not_found")
        return ModelCard(id=model_id)

    @router.get("/v1/audio/voices", response_model=VoiceList, responses=ERROR_RESPONSES,
                summary="Voices, and what OpenAI's voice names map to")
    async def list_voices() -> VoiceList:
        engine = hub.require_engine()
        infos = await asyncio.to_thread(engine.voices)
        names = {v.name for v in infos}
        mapped = {}
        for name in OPENAI_VOICES:
            try:
                mapped[name] = resolve_voice(name, names, engine.default_voice, aliases)
            except OpenAIError:
                continue  # an alias to a voice this engine lacks (requests get a 404 saying so)
        return VoiceList(
            voices=[VoiceCard(id=v.name, name=v.name, language=v.language, description=v.description)
                    for v in infos],
            default=engine.default_voice,
            aliases=mapped,
        )

    return router

