"""The wire protocol of ``/v1/stream``, sans I/O: frozen message dataclasses, one parser, one encoder.

Client -> server messages are JSON objects in text frames; server -> client control messages are
JSON objects in text frames and audio is sent in binary frames only (one Opus packet, or one PCM
s16le chunk of ``frame_ms``). docs/PROTOCOL.md documents every message; bump ``PROTOCOL_VERSION`` on
any incompatible change.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, cast

from stream_server.errors import ProtocolError

PROTOCOL_VERSION = 1

AudioFormat = Literal["opus", "pcm_s16le", "ulaw", "alaw"]
# Output sample rates per format (Hz), as engine.codec supports them (a test checks). Opus defaults to
# 24 kHz (20 ms = 480 samples); other rates are resampled on the engine thread.
SAMPLE_RATES: dict[str, tuple[int, ...]] = {
    "opus": (8000, 12000, 16000, 24000, 48000),
    "pcm_s16le": (8000, 16000, 22050, 24000, 32000, 44100, 48000),
    "ulaw": (8000,),  # G.711 mu-law, 1 byte per sample (telephony)
    "alaw": (8000,),  # G.711 A-law
}
MAX_VOICE_CHARS = 64


@dataclass(frozen=True)
class ProtocolLimits:
    """What the parser enforces (from ``ServerConfig``)."""

    max_message_chars: int = 10_000
    default_format: str = "opus"  # the format a `start` without `format` gets (for its sample_rate)


# --------------------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class StartOptions:
    """The ``options`` object of ``start``; None = engine default."""

    speed: float | None = None
    nfe: int | None = None
    seed: int | None = None
    cfg_strength: float | None = None


@dataclass(frozen=True)
class Start:
    type: ClassVar[str] = "start"
    voice: str | None = None
    format: AudioFormat | None = None
    sample_rate: int | None = None
    options: StartOptions = field(default_factory=StartOptions)
    # bit/s for the encoders that take one (mp3, ogg_opus, opus); set by the HTTP and ElevenLabs
    # APIs, not parsed from a /v1/stream message (None = the format's default)
    bitrate: int | None = None


@dataclass(frozen=True)
class Text:
    type: ClassVar[str] = "text"
    text: str


@dataclass(frozen=True)
class Flush:
    type: ClassVar[str] = "flush"


@dataclass(frozen=True)
class Clear:
    type: ClassVar[str] = "clear"


@dataclass(frozen=True)
class End:
    type: ClassVar[str] = "end"


ClientMessage = Start | Text | Flush | Clear | End

# --------------------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Ready:
    type: ClassVar[str] = "ready"
    protocol_version: int
    session_id: str
    engine: str
    device: str
    voice: str
    format: str
    sample_rate: int
    frame_ms: int
    channels: int = 1
    replica: str = ""  # the server replica serving the session (Ray Serve); "" on a single server


@dataclass(frozen=True)
class SegmentStarted:
    """Sent before the first audio frame of a segment."""

    type: ClassVar[str] = "segment"
    index: int
    text: str


@dataclass(frozen=True)
class SegmentDone:
    type: ClassVar[str] = "segment_done"
    index: int
    audio_ms: float
    synth_ms: float
    rtf: float


@dataclass(frozen=True)
class Flushed:
    """Stats of one turn (the text since the previous flush); ttfa_ms None when it had no audio."""

    type: ClassVar[str] = "flushed"
    ttfa_ms: float | None
    audio_ms: float
    rtf: float | None
    segments: int


@dataclass(frozen=True)
class Cleared:
    type: ClassVar[str] = "cleared"


@dataclass(frozen=True)
class Done:
    """Stats of the whole session; sent after ``end`` once all audio is written, then close 1000."""

    type: ClassVar[str] = "done"
    ttfa_ms: float | None
    audio_ms: float
    rtf: float | None
    segments: int


@dataclass(frozen=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    message: str
    retry_after_ms: int | None = None  # over_capacity only: when a retry may be admitted (omitted if None)


ServerMessage = Ready | SegmentStarted | SegmentDone | Flushed | Cleared | Done | Error

# --------------------------------------------------------------------------- parsing

_START_FIELDS = frozenset({"type", "voice", "format", "sample_rate", "options"})
_OPTION_FIELDS = frozenset({"speed", "nfe", "seed", "cfg_strength"})
_SIMPLE: dict[str, type[Flush] | type[Clear] | type[End]] = {"flush": Flush, "clear": Clear, "end": End}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _reject_unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ProtocolError("unknown_field", f"unknown field(s) in {where}: {', '.join(unknown)}")


def _parse_options(raw: Any) -> StartOptions:
    if raw is None:
        return StartOptions()
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_field", "options must be an object")
    _reject_unknown(raw, _OPTION_FIELDS, "options")
    for name in ("speed", "cfg_strength"):
        if raw.get(name) is not None and not _is_number(raw[name]):
            raise ProtocolError("invalid_field", f"options.{name} must be a number")
    for name in ("nfe", "seed"):
        if raw.get(name) is not None and not _is_int(raw[name]):
            raise ProtocolError("invalid_field", f"options.{name} must be an integer")
    speed = raw.get("speed")
    cfg = raw.get("cfg_strength")
    return StartOptions(
        speed=None if speed is None else float(speed),
        nfe=raw.get("nfe"),
        seed=raw.get("seed"),
        cfg_strength=None if cfg is None else float(cfg),
    )


def _parse_start(obj: dict[str, Any], limits: ProtocolLimits) -> Start:
    _reject_unknown(obj, _START_FIELDS, "start")
    voice = obj.get("voice")
    if voice is not None and (not isinstance(voice, str) or not 0 < len(voice) <= MAX_VOICE_CHARS):
        raise ProtocolError("invalid_field", f"voice must be a string of 1..{MAX_VOICE_CHARS} characters")
    fmt = obj.get("format")
    if fmt is not None:
        if not isinstance(fmt, str):
            raise ProtocolError("invalid_field", "format must be a string")
        if fmt not in SAMPLE_RATES:
            raise ProtocolError(
                "unsupported_format", f"format must be one of {', '.join(SAMPLE_RATES)}"
            )
    rate = obj.get("sample_rate")
    if rate is not None:
        if not _is_int(rate):
            raise ProtocolError("invalid_field", "sample_rate must be an integer (Hz)")
        effective = fmt or limits.default_format
        allowed = SAMPLE_RATES[effective]
        if rate not in allowed:
            raise ProtocolError(
                "unsupported_sample_rate",
                f"sample_rate for {effective} must be one of {', '.join(map(str, allowed))}",
            )
    return Start(
        voice=voice,
        format=cast("AudioFormat | None", fmt),  # checked against SAMPLE_RATES above
        sample_rate=rate,
        options=_parse_options(obj.get("options")),
    )


def parse_client_message(raw: str, limits: ProtocolLimits) -> ClientMessage:
    """Parse one client text frame.

    Raises:
        ProtocolError: with code invalid_json, unknown_type, unknown_field, invalid_field,
            text_too_long, unsupported_format or unsupported_sample_rate.
    """
    # JSON escapes can take 6 characters per text character; anything longer cannot be a valid
    # message within the limit, so refuse it before parsing.
    if len(raw) > 6 * limits.max_message_chars + 1024:
        raise ProtocolError("text_too_long", f"message over {limits.max_message_chars} characters")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("invalid_json", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_json", "message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("unknown_type", "message needs a string field 'type'")
    if kind == "text":
        _reject_unknown(obj, frozenset({"type", "text"}), "text")
        text = obj.get("text")
        if not isinstance(text, str):
            raise ProtocolError("invalid_field", "text must be a string")
        if len(text) > limits.max_message_chars:
            raise ProtocolError(
                "text_too_long", f"text over {limits.max_message_chars} characters; split it"
            )
        return Text(text=text)
    if kind == "start":
        return _parse_start(obj, limits)
    if kind in _SIMPLE:
        _reject_unknown(obj, frozenset({"type"}), kind)
        return _SIMPLE[kind]()
    raise ProtocolError("unknown_type", f"unknown message type {kind[:32]!r}")


# --------------------------------------------------------------------------- encoding


def _rounded(value: Any) -> Any:
    # Milliseconds to 0.01, ratios to 1e-4: more digits are noise and cost bytes.
    if isinstance(value, float):
        return round(value, 4)
    return value


def encode_server_message(msg: ServerMessage) -> str:
    """JSON text of a server message, ``type`` first."""
    body = {name: _rounded(value) for name, value in asdict(msg).items()}
    if isinstance(msg, Error) and msg.retry_after_ms is None:
        del body["retry_after_ms"]
    return json.dumps({"type": msg.type, **body}, ensure_ascii=False, separators=(",", ":"))


def encode_client_message(msg: ClientMessage) -> str:
    """JSON text of a client message (for test clients and the benchmark); None fields omitted."""
    body: dict[str, Any] = {"type": msg.type}
    if isinstance(msg, Start):
        for name in ("voice", "format", "sample_rate"):
            if getattr(msg, name) is not None:
                body[name] = getattr(msg, name)
        options = {k: v for k, v in asdict(msg.options).items() if v is not None}
        if options:
            body["options"] = options
    elif isinstance(msg, Text):
        body["text"] = msg.text
    return json.dumps(body, ensure_ascii=False)
