"""The ElevenLabs-compatible streaming WebSocket protocol, sans I/O.

``/v1/text-to-speech/{voice_id}/stream-input`` (one context) and ``.../multi-stream-input`` (up to
``MAX_CONTEXTS`` contexts per connection). This module parses the query string (``parse_query``)
and client text frames (``parse_client_message``) into frozen dataclasses, raising
``ElevenLabsError`` for anything else, and encodes server messages (``encode_server_message``).
No asyncio here; ``stream_server.api.elevenlabs_ws`` is the glue. docs/INTEGRATIONS.md documents
what is supported and what is accepted but ignored.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from stream_server.errors import CLOSE_POLICY_VIOLATION

MAX_CONTEXTS = 5
INACTIVITY_DEFAULT_S = 20
INACTIVITY_MAX_S = 180
SPEED_RANGE = (0.7, 1.2)
CHUNK_LENGTH_RANGE = (50, 500)
MAX_ID_CHARS = 128
SEED_MAX = 4294967295

Codec = Literal["pcm_s16le", "ulaw", "alaw", "mp3", "ogg_opus"]


@dataclass(frozen=True)
class OutputFormat:
    """One ``output_format`` value: the encoder (``engine.codec.make_encoder``) that makes it."""

    name: str
    codec: Codec
    sample_rate: int
    bitrate: int | None = None  # bit/s (mp3, opus)


def _formats() -> dict[str, OutputFormat]:
    table: list[OutputFormat] = [
        OutputFormat(f"pcm_{r}", "pcm_s16le", r) for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000)
    ]
    table += [OutputFormat("ulaw_8000", "ulaw", 8000), OutputFormat("alaw_8000", "alaw", 8000)]
    table += [OutputFormat("mp3_22050_32", "mp3", 22050, 32000), OutputFormat("mp3_24000_48", "mp3", 24000, 48000)]
    table += [OutputFormat(f"mp3_44100_{k}", "mp3", 44100, k * 1000) for k in (32, 64, 96, 128, 192)]
    table += [OutputFormat(f"opus_48000_{k}", "ogg_opus", 48000, k * 1000) for k in (32, 64, 96, 128, 192)]
    return {f.name: f for f in table}


OUTPUT_FORMATS: dict[str, OutputFormat] = _formats()
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"  # ElevenLabs' default


class ElevenLabsError(Exception):
    """Something the client must be told, followed by closing the socket with ``close_code``.

    ``error`` is the machine-readable id (the ``error`` field), ``message`` the human text.
    """

    def __init__(self, error: str, message: str, *, close_code: int = CLOSE_POLICY_VIOLATION,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.close_code = close_code
        self.param = param


# --------------------------------------------------------------------------- query


@dataclass(frozen=True)
class StreamParams:
    """The query string of a connection, validated."""

    voice_id: str
    multi: bool
    output_format: OutputFormat
    model_id: str | None = None  # accepted, not used (one engine per server)
    inactivity_timeout_s: int = INACTIVITY_DEFAULT_S
    sync_alignment: bool = False
    auto_mode: bool = False  # accepted; our chunker always starts at the first sentence/clause
    apply_text_normalization: Literal["auto", "on", "off"] = "auto"  # accepted, not used
    enable_ssml_parsing: bool = False  # accepted; SSML tags are not interpreted
    enable_logging: bool = True  # accepted; the server never logs text
    seed: int | None = None  # -> SynthOptions.seed (F5)
    language_code: str | None = None  # accepted, not used (pick the language with the voice)


_BOOL_PARAMS = ("sync_alignment", "auto_mode", "enable_ssml_parsing", "enable_logging")
_QUERY_PARAMS = frozenset(
    {"model_id", "output_format", "inactivity_timeout", "apply_text_normalization", "seed",
     "language_code", "apply_language_text_normalization", "optimize_streaming_latency",
     *_BOOL_PARAMS}
)
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


def _query_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ElevenLabsError("invalid_parameter", f"{name} must be true or false", param=name)


def _query_int(name: str, raw: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,10}", raw.strip()):
        raise ElevenLabsError("invalid_parameter", f"{name} must be an integer {low}..{high}", param=name)
    value = int(raw)
    if not low <= value <= high:
        raise ElevenLabsError("invalid_parameter", f"{name} must be {low}..{high}, got {value}", param=name)
    return value


def parse_query(voice_id: str, items: Iterable[tuple[str, str]], *, multi: bool) -> StreamParams:
    """Validate the path's voice id and the known query parameters (unknown ones are ignored, as
    ElevenLabs does, so a newer client's extra option does not break the connection)."""
    if not voice_id or len(voice_id) > MAX_ID_CHARS:
        raise ElevenLabsError("invalid_parameter", f"voice_id must be 1..{MAX_ID_CHARS} characters",
                              param="voice_id")
    query: dict[str, str] = {}
    for name, value in items:
        if name not in _QUERY_PARAMS:
            continue  # e.g. ?token= / ?authorization= (access control's), or a newer client's option
        if name in query:
            raise ElevenLabsError("invalid_parameter", f"query parameter {name} given twice", param=name)
        query[name] = value
    fmt_name = query.get("output_format", DEFAULT_OUTPUT_FORMAT)
    fmt = OUTPUT_FORMATS.get(fmt_name)
    if fmt is None:
        raise ElevenLabsError(
            "invalid_output_format",
            f"output_format must be one of {', '.join(OUTPUT_FORMATS)}",
            param="output_format",
        )
    model_id = query.get("model_id")
    if model_id is not None and not 0 < len(model_id) <= MAX_ID_CHARS:
        raise ElevenLabsError("invalid_parameter", "model_id must be 1..128 characters", param="model_id")
    normalization = query.get("apply_text_normalization", "auto")
    if normalization not in ("auto", "on", "off"):
        raise ElevenLabsError("invalid_parameter", "apply_text_normalization must be auto, on or off",
                              param="apply_text_normalization")
    language = query.get("language_code")
    if language is not None and not _LANGUAGE.match(language):
        raise ElevenLabsError("invalid_parameter", "language_code must be an ISO 639 code such as 'en'",
                              param="language_code")
    flags = {name: _query_bool(name, query[name]) for name in _BOOL_PARAMS if name in query}
    for name in ("apply_language_text_normalization",):
        if name in query:
            _query_bool(name, query[name])
    if "optimize_streaming_latency" in query:
        _query_int("optimize_streaming_latency", query["optimize_streaming_latency"], 0, 4)
    timeout = INACTIVITY_DEFAULT_S
    if "inactivity_timeout" in query:
        timeout = _query_int("inactivity_timeout", query["inactivity_timeout"], 1, INACTIVITY_MAX_S)
    seed = _query_int("seed", query["seed"], 0, SEED_MAX) if "seed" in query else None
    return StreamParams(
        voice_id=voice_id,
        multi=multi,
        output_format=fmt,
        model_id=model_id,
        inactivity_timeout_s=timeout,
        apply_text_normalization=normalization,  # type: ignore[arg-type]  # checked above
        seed=seed,
        language_code=language,
        **flags,
    )


# --------------------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class VoiceSettings:
    """``voice_settings``: ``speed`` is used (our speed); the others are accepted and ignored."""

    speed: float | None = None
    stability: float | None = None
    similarity_boost: float | None = None
    style: float | None = None
    use_speaker_boost: bool | None = None


@dataclass(frozen=True)
class SendText:
    """Text for a context. The first message of a context (its opening ``" "``) may carry settings.

    ``text`` is never empty (an empty text is ``KeepAlive`` / ``EndOfInput``).
    """

    text: str
    context_id: str | None = None
    flush: bool = False
    try_trigger_generation: bool = False  # accepted; segments start as soon as a sentence is complete
    voice_settings: VoiceSettings | None = None
    chunk_length_schedule: tuple[int, ...] | None = None  # accepted, validated, not used
    api_key: str | None = None  # xi_api_key / xi-api-key / authorization of the first message


@dataclass(frozen=True)
class Flush:
    """``{"context_id": .., "flush": true}`` (or with ``"text": ""``): synthesize the buffer now."""

    context_id: str | None = None


@dataclass(frozen=True)
class KeepAlive:
    """Multi-context ``{"text": ""}``: resets the inactivity timer; never closes anything."""

    context_id: str | None = None


@dataclass(frozen=True)
class EndOfInput:
    """Single-context ``{"text": ""}``: flush, send the rest of the audio, ``isFinal``, close."""


@dataclass(frozen=True)
class CloseContext:
    context_id: str


@dataclass(frozen=True)
class CloseSocket:
    pass


ClientMessage = SendText | Flush | KeepAlive | EndOfInput | CloseContext | CloseSocket

_SINGLE_FIELDS = frozenset(
    {"text", "flush", "try_trigger_generation", "voice_settings", "generation_config",
     "generator_config", "xi_api_key", "xi-api-key", "authorization", "pronunciation_dictionary_locators"}
)
_MULTI_FIELDS = _SINGLE_FIELDS | {"context_id", "close_context", "close_socket"}
_VOICE_NUMBERS = ("stability", "similarity_boost", "style")


def _bad(message: str, param: str | None = None) -> ElevenLabsError:
    return ElevenLabsError("invalid_message", message, param=param)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional_bool(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"{name} must be true or false", name)
    return bool(value)


def _voice_settings(raw: Any) -> VoiceSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("voice_settings must be an object", "voice_settings")
    unknown = sorted(set(raw) - {"speed", "use_speaker_boost", *_VOICE_NUMBERS})
    if unknown:
        raise _bad(f"unknown field(s) in voice_settings: {', '.join(u[:40] for u in unknown[:5])}", "voice_settings")
    values: dict[str, Any] = {}
    for name in _VOICE_NUMBERS:
        v = raw.get(name)
        if v is not None:
            if not _is_number(v) or not 0.0 <= v <= 1.0:
                raise _bad(f"voice_settings.{name} must be a number 0..1", f"voice_settings.{name}")
            values[name] = float(v)
    speed = raw.get("speed")
    if speed is not None:
        low, high = SPEED_RANGE
        if not _is_number(speed) or not low <= speed <= high:
            raise _bad(f"voice_settings.speed must be a number {low}..{high}", "voice_settings.speed")
        values["speed"] = float(speed)
    boost = raw.get("use_speaker_boost")
    if boost is not None:
        if not isinstance(boost, bool):
            raise _bad("voice_settings.use_speaker_boost must be true or false", "voice_settings.use_speaker_boost")
        values["use_speaker_boost"] = boost
    return VoiceSettings(**values)


def _chunk_schedule(raw: Any, name: str) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"chunk_length_schedule"}:
        raise _bad(f"{name} must be an object with chunk_length_schedule only", name)
    schedule = raw.get("chunk_length_schedule")
    if schedule is None:
        return None
    low, high = CHUNK_LENGTH_RANGE
    if (not isinstance(schedule, list) or not 0 < len(schedule) <= 32
            or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in schedule)):
        raise _bad(f"chunk_length_schedule must be a list of integers {low}..{high}", "chunk_length_schedule")
    return tuple(schedule)


def _api_key(obj: dict[str, Any]) -> str | None:
    key = None
    for name in ("xi_api_key", "xi-api-key", "authorization"):
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 512:
            raise _bad(f"{name} must be a string", name)
        if key is None:
            key = value.removeprefix("Bearer ").strip() if name == "authorization" else value
    return key


def _context_id(obj: dict[str, Any]) -> str | None:
    cid = obj.get("context_id")
    if cid is None:
        return None
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_ID_CHARS:
        raise _bad(f"context_id must be a string of 1..{MAX_ID_CHARS} characters", "context_id")
    return cid


def parse_client_message(raw: str, *, multi: bool, max_chars: int) -> ClientMessage:
    """Parse one client text frame of either endpoint.

    Raises:
        ElevenLabsError: ``invalid_message`` (bad JSON, unknown or mistyped fields, text over
            ``max_chars``), always with close code 1008.
    """
    if len(raw) > 6 * max_chars + 4096:
        raise _bad(f"message over {max_chars} characters", "text")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise _bad("message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _bad("message must be a JSON object")
    allowed = _MULTI_FIELDS if multi else _SINGLE_FIELDS
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(u[:40] for u in unknown[:5])}", unknown[0][:40])
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise _bad("text must be a string", "text")
    if text is not None and len(text) > max_chars:
        raise _bad(f"text over {max_chars} characters; send it in smaller pieces", "text")
    locators = obj.get("pronunciation_dictionary_locators")
    if locators is not None and not isinstance(locators, list):
        raise _bad("pronunciation_dictionary_locators must be a list", "pronunciation_dictionary_locators")
    flush = _optional_bool(obj, "flush")
    trigger = _optional_bool(obj, "try_trigger_generation")
    close_context = _optional_bool(obj, "close_context")
    close_socket = _optional_bool(obj, "close_socket")
    voice = _voice_settings(obj.get("voice_settings"))
    schedule = _chunk_schedule(obj.get("generation_config"), "generation_config")
    schedule = schedule or _chunk_schedule(obj.get("generator_config"), "generator_config")
    api_key = _api_key(obj)
    cid = _context_id(obj)
    if close_socket:
        return CloseSocket()
    if close_context:
        if cid is None:
            raise _bad("close_context needs a context_id", "context_id")
        return CloseContext(cid)
    if text:
        return SendText(text, cid, flush, trigger, voice, schedule, api_key)
    if flush:
        return Flush(cid)
    if text is None:
        raise _bad("message needs text (or flush, close_context, close_socket)", "text")
    return KeepAlive(cid) if multi else EndOfInput()


# --------------------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Alignment:
    """Per-character timing of one audio message, in ms relative to that message's first sample."""

    chars: tuple[str, ...]
    char_start_times_ms: tuple[int, ...]
    char_durations_ms: tuple[int, ...]


@dataclass(frozen=True)
class AudioMessage:
    audio: bytes
    context_id: str | None = None
    alignment: Alignment | None = None


@dataclass(frozen=True)
class FinalMessage:
    context_id: str | None = None


@dataclass(frozen=True)
class ErrorMessage:
    error: str
    message: str
    code: int
    param: str | None = None
    context_id: str | None = None


ServerMessage = AudioMessage | FinalMessage | ErrorMessage


def estimate_alignment(text: str, speech_ms: float, total_ms: float) -> Alignment:
    """Estimated timing for one segment's audio (our engines give no per-character timing).

    The segment text plus one trailing space: the text's characters share ``speech_ms`` equally
    (start of audio to the start of the silence appended after the segment), the space covers the
    rest up to ``total_ms``. Times are whole ms, contiguous, and end exactly at ``total_ms`` (so a
    client that advances its clock by the last start + duration stays in step with the audio).
    """
    total = max(0.0, total_ms)
    n = len(text)
    speech = min(max(0.0, speech_ms), total) if n else 0.0
    chars = (*text, " ")
    edges = [round(speech * i / n) for i in range(n)] if n else []
    edges += [round(speech), round(total)]
    starts = tuple(edges[:-1])
    durations = tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))
    return Alignment(chars, starts, durations)


def _alignment_json(a: Alignment | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"chars": list(a.chars), "charStartTimesMs": list(a.char_start_times_ms),
            "charDurationsMs": list(a.char_durations_ms)}


def encode_server_message(msg: ServerMessage) -> str:
    """JSON text of a server message; ``contextId`` (camelCase) only when there is one."""
    body: dict[str, Any]
    if isinstance(msg, AudioMessage):
        aligned = _alignment_json(msg.alignment)
        body = {"audio": base64.b64encode(msg.audio).decode("ascii"), "isFinal": None,
                "normalizedAlignment": aligned, "alignment": aligned}
    elif isinstance(msg, FinalMessage):
        body = {"isFinal": True}
    else:
        body = {"message": msg.message, "error": msg.error, "code": msg.code}
        if msg.param is not None:
            body["param"] = msg.param
    if msg.context_id is not None:
        body["contextId"] = msg.context_id
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
