"""Errors of the OpenAI-compatible routes, in OpenAI's shape and with OpenAI's statuses.

Body: ``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}``. The
``openai`` SDK maps the status to its exception class (400 ``BadRequestError``, 401
``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``, >= 500
``InternalServerError``). Codes of the server's own error table (``stream_server.errors``) keep their
name here; ``STATUS_OF_CODE`` gives their HTTP status.

``OpenAIRoute`` is the route class of the OpenAI router: request validation errors (unknown field,
wrong type, bad JSON) become 400s in this shape instead of FastAPI's 422, and any ``HTTPException``
raised by a route or by a dependency (an auth guard, for one) keeps its status and headers but gets
this body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

# starlette's: FastAPI raises this base class itself (e.g. a body it cannot decode)
from starlette.exceptions import HTTPException

# HTTP status of the server's error codes (keys of stream_server.errors.ERROR_TABLE, a test checks)
# on the OpenAI routes
STATUS_OF_CODE: dict[str, int] = {
    "unknown_field": 400,
    "invalid_field": 400,
    "text_too_long": 400,
    "session_text_limit": 400,
    "unsupported_format": 400,
    "unsupported_sample_rate": 400,
    "invalid_option": 400,
    "unknown_voice": 404,
    "busy": 503,
    "overloaded": 503,
    "shutting_down": 503,
    "idle_timeout": 500,
    "internal_error": 500,
    "engine_error": 500,
    "weights_not_found": 500,
    "checkpoint_error": 500,
    "invalid_voice": 500,
}

_TYPE_OF_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """The body of every error answer of the OpenAI routes."""

    model_config = ConfigDict(extra="forbid")
    error: OpenAIErrorDetail


def error_type(status: int) -> str:
    if status in _TYPE_OF_STATUS:
        return _TYPE_OF_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAIError(Exception):
    """An error answer. ``headers``: e.g. ``Retry-After`` on 429 / 503."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @classmethod
    def from_code(cls, code: str, message: str, *, param: str | None = None) -> OpenAIError:
        """An error of the server's table (``stream_server.errors``) with its mapped status."""
        status = STATUS_OF_CODE.get(code, 500)
        headers = {"Retry-After": "1"} if status == 503 else None
        return cls(status, message, param=param, code=code, headers=headers)

    def response(self) -> JSONResponse:
        body = OpenAIErrorBody(
            error=OpenAIErrorDetail(message=self.message, type=error_type(self.status), param=self.param,
                                    code=self.code)
        )
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def _param(loc: Sequence[Any]) -> str | None:
    """The request field an error is about (``voice`` for ``("body", "voice", "str")``)."""
    parts = [str(p) for p in loc[1:]] if loc and loc[0] == "body" else [str(p) for p in loc]
    return parts[0] if parts else None


def from_validation(exc: RequestValidationError) -> OpenAIError:
    """The first validation problem as a 400 (unknown fields named like OpenAI names them)."""
    errors = list(exc.errors())
    if not errors:
        return OpenAIError(400, "invalid request body", code="invalid_request")
    # an unknown field anywhere wins (a union like `voice` reports its other branches first)
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    kind = str(first.get("type", ""))
    loc = tuple(first.get("loc", ()))
    param = _param(loc)
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else param
        return OpenAIError(400, f"Unrecognized request argument supplied: {name}", param=param,
                           code="unknown_parameter")
    if kind == "json_invalid":
        return OpenAIError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    if kind == "missing":
        if param is None:
            return OpenAIError(400, "The request needs a JSON body.", code="missing_body")
        return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param,
                           code="missing_required_parameter")
    msg = str(first.get("msg", "invalid value"))
    if param is None:
        return OpenAIError(400, f"The request body must be a JSON object: {msg}", code="invalid_request")
    return OpenAIError(400, f"Invalid value for '{param}': {msg}", param=param, code="invalid_value")


def from_http_exception(exc: HTTPException) -> OpenAIError:
    detail = exc.detail
    code: str | None = None
    if isinstance(detail, dict):
        code = detail.get("code") if isinstance(detail.get("code"), str) else None
        message = str(detail.get("message") or HTTPStatus(exc.status_code).phrase)
    else:
        message = str(detail) if detail else HTTPStatus(exc.status_code).phrase
    return OpenAIError(exc.status_code, message, code=code, headers=exc.headers)


class OpenAIRoute(APIRoute):
    """Route class that answers every error of the route and its dependencies in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return from_validation(exc).response()
            except HTTPException as exc:
                return from_http_exception(exc).response()

        return openai_handler


# OpenAPI ``responses`` entries for the error statuses of the OpenAI routes
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": text}
    for status, text in (
        (400, "Invalid request (unknown field, bad value, input too long)"),
        (401, "Missing or invalid API key (when access control is on)"),
        (403, "Key not allowed here"),
        (404, "Unknown model or voice"),
        (429, "Rate limit of the key reached"),
        (500, "Synthesis failed"),
        (503, "Warming up, overloaded or shutting down"),
        ("4XX", "Any other client error"),
    )
}
