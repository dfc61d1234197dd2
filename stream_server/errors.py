"""One error hierarchy and one table mapping every error to a wire code and a close code.

Library code raises ``StreamError`` subclasses (or ``engine.base.EngineError``); the connection glue
turns them into an ``error`` message with ``wire_error(exc)`` and closes the socket when the table
says so. Clients get the short message; logs get the details (``StreamError.detail``).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.base import EngineError

# WebSocket close codes (RFC 6455 section 7.4.1) used by the server.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class ErrorKind:
    """One row of the error table.

    Attributes:
        code: stable wire code (the ``code`` field of the ``error`` message).
        close_code: WebSocket close code sent after the error, or None when the session continues.
        protocol_abuse: counts towards ``ServerConfig.max_protocol_errors``.
        summary: one line for docs/PROTOCOL.md and for clients that show a generic message.
    """

    code: str
    close_code: int | None
    protocol_abuse: bool
    summary: str


_KINDS = (
    ErrorKind("invalid_json", None, True, "the text frame is not valid JSON or not a JSON object"),
    ErrorKind("unknown_type", None, True, "the message type is missing or unknown"),
    ErrorKind("unknown_field", None, True, "the message has a field this type does not define"),
    ErrorKind("invalid_field", None, True, "a field has the wrong type or an empty value"),
    ErrorKind("text_too_long", None, True, "text over the per-message limit; the message is dropped"),
    ErrorKind("session_text_limit", None, False, "the session's total text limit is reached; text is dropped"),
    ErrorKind("unknown_voice", None, False, "the voice is not one of GET /v1/voices"),
    ErrorKind("unsupported_format", None, False, "format is not one of opus, pcm_s16le, ulaw, alaw"),
    ErrorKind("unsupported_sample_rate", None, False, "sample_rate is not supported for this format"),
    ErrorKind("invalid_option", None, False, "an option is out of range"),
    ErrorKind("binary_not_allowed", None, True, "clients send JSON text frames only"),
    ErrorKind("after_end", None, True, "a message arrived after end; it is ignored"),
    ErrorKind("already_started", None, True, "start must be the first message of a session"),
    ErrorKind("busy", None, False, "too many segments waiting; this text was not accepted, resend later"),
    ErrorKind("idle_timeout", CLOSE_NORMAL, False, "no message for idle_timeout_s while idle"),
    ErrorKind("start_timeout", CLOSE_POLICY_VIOLATION, False, "no start or text within start_timeout_s"),
    ErrorKind("too_many_errors", CLOSE_POLICY_VIOLATION, False, "too many protocol errors"),
    ErrorKind("overloaded", CLOSE_TRY_AGAIN_LATER, False, "the server has max_sessions sessions open"),
    # admission control: on connect followed by close 1013; on a new turn the text is dropped and
    # the session stays open (both carry retry_after_ms)
    ErrorKind("over_capacity", None, False, "the server is at capacity; retry after retry_after_ms"),
    ErrorKind("internal_error", CLOSE_INTERNAL_ERROR, False, "unexpected server error (logged)"),
    ErrorKind("shutting_down", CLOSE_GOING_AWAY, False, "the server is shutting down"),
    # engine errors (engine.base.EngineError.code): one segment failed, the session continues
    ErrorKind("engine_error", None, False, "the engine failed on one segment"),
    ErrorKind("engine_fault", None, False, "unexpected engine failure on one segment (logged); it is skipped"),
    ErrorKind("out_of_memory", None, False, "the device ran out of memory even for this segment alone; it is skipped"),
    ErrorKind("engine_timeout", None, False, "the engine hung on one segment; its worker was replaced"),
    ErrorKind("worker_crashed", None, False, "the engine worker process died during one segment"),
    ErrorKind("worker_restarted", None, False, "a segment in progress on a lost engine worker was dropped"),
    ErrorKind("weights_not_found", None, False, "the engine's model files are missing"),
    ErrorKind("checkpoint_error", None, False, "the engine's checkpoint does not load"),
    ErrorKind("invalid_voice", None, False, "the voice's reference clip is unusable"),
)

ERROR_TABLE: dict[str, ErrorKind] = {kind.code: kind for kind in _KINDS}


def error_kind(code: str) -> ErrorKind:
    """The table row for ``code``; unknown codes (e.g. a new engine error) continue the session."""
    return ERROR_TABLE.get(code, ErrorKind(code, None, False, "engine error"))


class StreamError(Exception):
    """Base of all server-side errors that reach a client.

    Args:
        code: a key of ``ERROR_TABLE``.
        message: short text for the client.
        detail: longer text for the log only.
    """

    def __init__(self, code: str, message: str, *, detail: str = "") -> None:
        if code not in ERROR_TABLE:
            raise ValueError(f"unknown error code {code!r}; add it to ERROR_TABLE")
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    @property
    def kind(self) -> ErrorKind:
        return ERROR_TABLE[self.code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ProtocolError(StreamError):
    """The client sent something the protocol does not allow (bad JSON, fields, limits, order)."""


class SessionLimitError(StreamError):
    """A per-session limit or the server's capacity stops this request (busy, text limits)."""


class ConfigError(Exception):
    """The configuration (TOML file or CLI flags) is invalid. Raised at start-up, never on the wire."""


def wire_error(exc: BaseException) -> tuple[str, str]:
    """(code, client message) for any exception; unexpected ones become ``internal_error``."""
    if isinstance(exc, StreamError):
        return exc.code, exc.message
    if isinstance(exc, EngineError):
        return exc.code, str(exc) or exc.code
    return "internal_error", "internal server error"
