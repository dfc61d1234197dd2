"""ElevenLabs-compatible WebSockets, sans I/O: the connection's query string and output formats.

``parse_query`` validates ``/v1/text-to-speech/{voice_id}/stream-input?...`` (and
``multi-stream-input``) into a frozen ``StreamParams``, raising ``ElevenLabsError``: the error every
ElevenLabs-API module raises (sent as ``{"message", "error", "code"}``, then the socket closes with
``close_code``). docs/INTEGRATIONS.md documents what is used and what is accepted but ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

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
