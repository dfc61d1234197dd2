"""The OpenAI speech API's request model, its model names and voice aliases (no I/O).

Voices: a request names one of our voices (``GET /v1/voices``), or one of OpenAI's voice names,
which ``ServerConfig.openai_voice_aliases`` maps to ours (``"alloy=en-us"``); OpenAI names without
an entry speak with the engine's default voice. Anything else is a 404 ``voice_not_found``.

Speed: OpenAI allows 0.25..4.0, our engines 0.5..2.0 (``SynthOptions``). ``plan_speed`` gives the
engine the part it can do and time-stretches the rest (FFmpeg ``atempo``, pitch kept), so every
OpenAI speed works: 0.25 = engine 0.5 x stretch 0.5, 4.0 = engine 2.0 x stretch 2.0.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from stream_server.api.openai_errors import OpenAIError

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
)
# OpenAI's speech model names, accepted as aliases of the running engine
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
OUR_MODEL = "stream-tts"
ENGINE_SPEED_MIN, ENGINE_SPEED_MAX = 0.5, 2.0  # engine.base.SynthOptions.validate


class VoiceId(BaseModel):
    """A voice given as an object, as the SDK's custom voices are: ``{"id": "en-us"}``."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1, max_length=64)]


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech``. Unknown fields are refused (400 ``unknown_parameter``)."""

    model_config = ConfigDict(extra="forbid")
    model: Annotated[str, Field(min_length=1, max_length=128, description="see GET /v1/models")]
    input: Annotated[str, Field(
        min_length=1,
        description="Text to speak; at most ServerConfig.openai_max_input_chars characters (4096 by default).",
    )]
    voice: Annotated[str | VoiceId, Field(description="one of GET /v1/audio/voices, or an OpenAI voice name")]
    instructions: Annotated[str | None, Field(
        max_length=4096, description="Accepted and ignored (our engines take no style prompt).",
    )] = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    stream_format: Literal["audio", "sse"] = "audio"


@dataclass(frozen=True)
class SpeedPlan:
    engine_speed: float  # SynthOptions.speed, 0.5..2.0
    tempo: float  # time-stretch after synthesis, 0.5..2.0 (1.0 = none)


def plan_speed(speed: float) -> SpeedPlan:
    """Split an OpenAI speed (0.25..4.0) into engine speed x time-stretch (see the module)."""
    engine_speed = min(max(speed, ENGINE_SPEED_MIN), ENGINE_SPEED_MAX)
    tempo = speed / engine_speed
    return SpeedPlan(engine_speed, 1.0 if abs(tempo - 1.0) < 1e-9 else tempo)


def parse_aliases(entries: Collection[str]) -> dict[str, str]:
    """``("alloy=en-us", ...)`` -> ``{"alloy": "en-us"}`` (names case-insensitive)."""
    table: dict[str, str] = {}
    for entry in entries:
        name, sep, target = entry.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"voice alias {entry!r} is not NAME=VOICE")
        table[name.strip().lower()] = target.strip()
    return table


def resolve_voice(requested: str | VoiceId, ours: Collection[str], default: str,
                  aliases: dict[str, str]) -> str:
    """Our voice for the request's ``voice``; raises a 404 ``OpenAIError`` when there is none."""
    name = (requested.id if isinstance(requested, VoiceId) else requested).strip()
    if name in ours:
        return name
    key = name.lower()
    if key in ours:
        return key
    if key in aliases:
        target = aliases[key]
        if target not in ours:
            raise OpenAIError(404, f"Voice alias '{name}' maps to '{target}', which this server does not "
                              "have (see GET /v1/audio/voices).", param="voice", code="voice_not_found")
        return target
    if key in OPENAI_VOICES:
        return default
    raise OpenAIError(404, f"Voice '{name}' not found; see GET /v1/audio/voices.", param="voice",
                      code="voice_not_found")


def model_names(engine_name: str) -> list[str]:
    """Model ids we accept: ours, the engine's name, and OpenAI's speech model names."""
    return list(dict.fromkeys([OUR_MODEL, engine_name, *OPENAI_MODELS]))
