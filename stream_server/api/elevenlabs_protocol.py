"""The ElevenLabs-compatible streaming WebSocket messages, sans I/O.

``/v1/text-to-speech/{voice_id}/stream-input`` (one context) and ``.../multi-stream-input`` (up to
``MAX_CONTEXTS`` contexts per connection). ``parse_client_message`` turns a client text frame into
a frozen dataclass or raises ``ElevenLabsError``; ``encode_server_message`` writes server messages.
The query string is ``elevenlabs_query``; ``elevenlabs_ws`` is the glue. No asyncio here.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from stream_server.api.elevenlabs_query import (
    CHUNK_LENGTH_RANGE,
    MAX_ID_CHARS,
    SPEED_RANGE,
    ElevenLabsError,
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
