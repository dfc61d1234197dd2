"""Server configuration, and the one place where all component configs are composed and loaded.

``AppConfig`` holds one frozen dataclass per component (``ServerConfig`` here, ``ChunkerConfig`` in
``chunker``, ``EngineConfig`` / ``AudioConfig`` in ``engine.config``). Defaults live only in those
dataclasses: ``load_config`` reads a TOML file with the sections ``[server] [chunker] [engine]
[audio]`` and then applies overrides; ``add_config_flags`` generates one CLI flag per field, so a
default can never drift between the CLI and the code.

Flags: every field gets ``--SECTION.FIELD-NAME`` (``--engine.nfe``); fields whose name is unique
across sections also get the short alias ``--FIELD-NAME`` (``--nfe``, ``--port``, ``--max-chars``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chunker import ChunkerConfig
from engine.config import AudioConfig, EngineConfig
from stream_server.errors import ConfigError


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 64  # concurrent WebSocket sessions; one more is closed with 1013
    max_message_chars: int = 10_000  # text per `text` message
    max_session_chars: int = 200_000  # text per session (all `text` messages)
    # segments waiting for synthesis per session; a `text` that would exceed it is answered `busy`
    max_pending_segments: int = 32
    # synthesis may run this far (seconds of audio) ahead of the socket writer before the session's
    # job is parked, so a slow client cannot make the server buffer unbounded audio
    max_ahead_s: float = 4.0
    # batching engines (stream_server.batch_policy): an item joins a step only if it adds at most
    # this fraction of its solo step cost (measured table); a segment made ahead rides along with
    # urgent ones only if it adds at most batch_ride_along_ratio of the step's cost
    batch_marginal_ratio: float = 0.5
    batch_ride_along_ratio: float = 0.1
    idle_timeout_s: float = 300.0  # an idle session (no work, no message) is closed after this
    max_protocol_errors: int = 10  # one more protocol error closes the session with 1008
    # faults and shutdown (docs/RELIABILITY.md)
    drain_timeout_s: float = 10.0  # SIGTERM/SIGINT: sessions mid-turn get this long to finish, then 1001
    handshake_timeout_s: float = 10.0  # a connection must send a whole HTTP request head within this
    start_timeout_s: float = 10.0  # a new WebSocket session must send `start` or `text` within this
    warmup_timeout_s: float = 900.0  # engine warm-up longer than this fails start-up
    default_format: Literal["opus", "pcm_s16le"] = "opus"
    # permessage-deflate on WebSockets: off by default, because audio frames (Opus, PCM) do not
    # compress and deflating every 20 ms packet cost the event loop about a fifth of its time at 64
    # clients (and the client as much to inflate); on only for text-heavy uses (alignment JSON)
    ws_compression: bool = False
    overlay_api_key: str = ""  # "" = the overlay POST routes need no key
    overlay_queue_size: int = 32
    overlay_max_chars: int = 500
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # after warm-up, move the objects built at start-up out of the cyclic GC's reach (gc.freeze):
    # a full collection over them stalled the event loop for 250-450 ms
    gc_freeze: bool = True
    # engine worker processes for CPU engines (eSpeak), each with its own audio post and encoders:
    # 0 = one per CPU core; 1 = everything on one engine thread in the server process (engines
    # without a worker recipe, e.g. F5 on its device, always run there)
    workers: int = 0
    # a worker process that takes longer than this for one step (about one engine chunk) is killed
    # and replaced; its segment fails with engine_timeout
    engine_watchdog_s: float = 10.0
    # admission control: a new session or turn is refused with over_capacity when the sessions
    # speaking would need more than this fraction of the measured synthesis capacity; 0 = off
    admission_headroom: float = 0.7
    # access control (stream_server/auth.py): on as soon as any API key is configured
    api_keys_file: str = ""  # one key per line (# comments); keys also from STREAM_TTS_API_KEYS
    token_secret: str = ""  # HMAC secret of POST /v1/tokens tokens; "" = random per process
    token_ttl_s: float = 300.0  # default lifetime of a minted token, at most 900 s
    allowed_origins: tuple[str, ...] = ()  # cross-origin pages allowed (WebSockets + CORS); "*" = any
    metrics_public: bool = True  # False: GET /metrics needs a key too
    key_max_sessions: int = 16  # concurrent streaming sessions per key; 0 = no limit
    key_requests_per_minute: int = 600  # requests and session opens per key; 0 = no limit
    # OpenAI-compatible speech API (stream_server/api, docs/INTEGRATIONS.md)
    openai_max_input_chars: int = 4096  # `input` of POST /v1/audio/speech
    # OpenAI voice name -> our voice, "alloy=en-us"; OpenAI names not listed use the default voice
    openai_voice_aliases: tuple[str, ...] = ()
    # ElevenLabs-compatible API: estimated per-character alignment with the audio (each segment's
    # audio then waits until the segment is synthesized) when the client asks (sync_alignment=true)
    # or always (for clients such as Pipecat that use it but cannot ask)
    elevenlabs_alignment: Literal["requested", "always"] = "requested"

    def __post_init__(self) -> None:
        positive = (
            "max_sessions",
            "max_message_chars",
            "max_session_chars",
            "max_pending_segments",
            "max_ahead_s",
            "idle_timeout_s",
            "warmup_timeout_s",
            "handshake_timeout_s",
            "start_timeout_s",
            "overlay_queue_size",
            "overlay_max_chars",
            "engine_watchdog_s",
            "openai_max_input_chars",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"server.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be 0..65535, got {self.port}")
        if self.drain_timeout_s < 0:
            raise ValueError("server.drain_timeout_s must be >= 0")
        if self.batch_marginal_ratio < 0 or self.batch_ride_along_ratio < 0:
            raise ValueError("server.batch_marginal_ratio and batch_ride_along_ratio must be >= 0")
        if self.workers < 0:
            raise ValueError(f"server.workers must be >= 0 (0 = one per CPU core), got {self.workers}")
        if not 0.0 <= self.admission_headroom <= 1.0:
            raise ValueError(f"server.admission_headroom must be 0..1, got {self.admission_headroom}")
        if self.max_protocol_errors < 0:
            raise ValueError("server.max_protocol_errors must be >= 0")
        if not 0 < self.token_ttl_s <= 900:
            raise ValueError(f"server.token_ttl_s must be in (0, 900], got {self.token_ttl_s}")
        if self.key_max_sessions < 0 or self.key_requests_per_minute < 0:
            raise ValueError("server.key_max_sessions and key_requests_per_minute must be >= 0")
        if self.max_message_chars > self.max_session_chars:
            raise ValueError("server.max_message_chars must be <= server.max_session_chars")
        for alias in self.openai_voice_aliases:
            name, sep, target = alias.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(f"server.openai_voice_aliases: {alias!r} is not NAME=VOICE")


@dataclass(frozen=True)
class AppConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "chunker": ChunkerConfig,
    "engine": EngineConfig,
    "audio": AudioConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a TOML / override value against a field type; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unsupported value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: field type {tp!r} cannot be configured")


def _build_section(name: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[name]
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{name}]: {', '.join(unknown)} (known: {', '.join(types_)})"
        )
    kwargs = {k: _coerce(v, types_[k], f"{name}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid [{name}] configuration: {exc}") from None


def load_config(toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Compose the app config: dataclass defaults <- TOML file <- overrides.

    Args:
        toml_path: optional TOML file with the sections [server] [chunker] [engine] [audio].
        overrides: ``{"section.field": value}`` (typed values, e.g. from ``overrides_from_args``).

    Raises:
        ConfigError: unreadable file, unknown section or key, wrong type, or a value a component
            rejects; the message names the offending key.
    """
    data: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)}; expected {', '.join(SECTIONS)}"
        )
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = dict(section)
    for key, value in (overrides or {}).items():
        name, _, field_name = key.partition(".")
        if name not in SECTIONS or not field_name:
            raise ConfigError(f"unknown override {key!r}; expected SECTION.FIELD")
        sections[name][field_name] = value
    built = {name: _build_section(name, values) for name, values in sections.items()}
    return AppConfig(**built)


# --------------------------------------------------------------------------- CLI flags


def _cli_parser(tp: Any) -> tuple[Any, list[Any] | None]:
    """(argparse type, choices) for a field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return type(args[0]), list(args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _cli_parser(inner[0])
    if origin is tuple:
        return (lambda s: tuple(p.strip() for p in s.split(",") if p.strip())), None
    return tp, None


def config_flags() -> list[tuple[str, str, list[str]]]:
    """``(section, field, option strings)`` for every configurable field, in declaration order."""
    counts: dict[str, int] = {}
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            counts[f.name] = counts.get(f.name, 0) + 1
    out = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            dashed = f.name.replace("_", "-")
            flags = [f"--{section}.{dashed}"]
            if counts[f.name] == 1:
                flags.insert(0, f"--{dashed}")
            out.append((section, f.name, flags))
    return out


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per config field (defaults suppressed: unset flags do not override TOML).

    A short alias already taken by the parser (e.g. a subcommand's own ``--voice``) is skipped;
    the ``--SECTION.FIELD`` form always exists.
    """
    group = parser.add_argument_group("configuration (defaults in the dataclasses; see example.toml)")
    taken = set(parser._option_string_actions)
    for section, name, flags in config_flags():
        tp = _field_types(SECTIONS[section])[name]
        flags = [f for f in flags if f not in taken]
        dest = f"{section}.{name}"
        default = getattr(SECTIONS[section](), name)
        help_ = f"[{section}] {name} (default: {default!r})"
        if tp is bool:
            group.add_argument(
                *flags, dest=dest, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_,
            )
            continue
        conv, choices = _cli_parser(tp)
        group.add_argument(
            *flags, dest=dest, type=conv, choices=choices, default=argparse.SUPPRESS,
            help=help_, metavar=None if choices else name.upper(),
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``{"section.field": value}`` for the config flags given on the command line."""
    keys = {f"{section}.{name}" for section, name, _ in config_flags()}
    return {k: v for k, v in vars(args).items() if k in keys}
