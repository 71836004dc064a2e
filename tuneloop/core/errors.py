"""One error family for every package, rendered by one handler as OpenAI's error envelope:
{"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class TuneloopError(Exception):
    """Base of every error a caller can act on. The message says what to fix; the class attributes say
    how the API renders it (status, OpenAI error ``type``, ``code``) and ``param`` names the offending
    field. Services raise subclasses; routes let them propagate; ``install_error_handlers`` renders
    them; the CLI and the UI show the message alone."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str = "", *, param: str | None = None, code: str | None = None):
        Exception.__init__(self, message)  # not super(): ApiError is also an HTTPException
        self._message = message
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self._message

    @property
    def message(self) -> str:
        return self._message


class InvalidInputError(TuneloopError, ValueError):
    """Bad input (400)."""


class TooLargeError(InvalidInputError):
    """An upload or body over the server's limit (413)."""

    status_code, error_type = 413, "request_too_large"


class UnauthorizedError(TuneloopError):
    status_code, error_type = 401, "authentication_error"


class ForbiddenError(TuneloopError, PermissionError):
    """The caller may not do this (403)."""

    status_code, error_type = 403, "permission_error"


class NotFoundError(TuneloopError, LookupError):
    """No such object (404)."""

    status_code, error_type = 404, "not_found_error"


class ConflictError(TuneloopError):
    """The object is no longer in a state that allows this (409)."""

    status_code, error_type = 409, "conflict_error"


class UnavailableError(TuneloopError, RuntimeError):
    """Not ready yet or a dependency is down (503): the client may retry."""

    status_code, error_type = 503, "server_error"


class UpstreamError(UnavailableError):
    """A server we depend on refused (502)."""

    status_code, error_type = 502, "upstream_error"


class ApiError(TuneloopError, HTTPException):
    """An error raised by a route with an explicit status (the family above is preferred in services)."""

    def __init__(self, status_code: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        TuneloopError.__init__(self, message, param=param, code=code)
        HTTPException.__init__(self, status_code=status_code, detail=message, headers=headers)
        self.error_type = type

    @property
    def type(self) -> str:
        return self.error_type


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def generation_error(exc: Exception) -> TuneloopError:
    """What a failed generation answers: a ``TuneloopError`` is the request's (a token id outside the
    vocabulary: 400 naming ``logit_bias``) or says itself that it is the server's, and keeps its status;
    anything else is the server's, 503 so the client may retry. A request's fault must never be a 503:
    clients retry those, and would send the same bad request again."""
    if isinstance(exc, TuneloopError):
        return exc
    return ApiError(503, f"Generation failed: {exc}", type="server_error")


def stream_error_event(exc: Exception) -> str:
    """``generation_error`` as an SSE event: once a stream's headers are sent, the error goes into it."""
    error = generation_error(exc)
    return f"data: {json.dumps(error_body(str(error), error.error_type, error.param, error.code))}\n\n"


def install_error_handlers(app: FastAPI) -> None:
    """One rendering for every error: the family above, the framework's own HTTP errors (unknown
    routes, wrong methods), request validation (400 naming the field) and anything unexpected (500,
    logged, never a traceback to the client)."""

    @app.exception_handler(TuneloopError)
    async def _tuneloop_error(_request: Request, exc: TuneloopError):
        return JSONResponse(error_body(str(exc), exc.error_type, exc.param, exc.code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(StarletteHTTPException)  # also the router's own 404/405 for unknown routes
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        type_ = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large",
                 429: "rate_limit_error"}.get(exc.status_code, "invalid_request_error")
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body(f"The server had an error processing the request ({type(exc).__name__}); "
                                       "retry, and report it if it persists.", "server_error"), status_code=500)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) of a pydantic validation failure: ``param`` is the dotted field path
    (``messages.0.content``), the message has no pydantic prefix such as "Value error, "."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    error = (first.get("ctx") or {}).get("error")
    if getattr(error, "param", None):  # a model-level check that names its field
        param = error.param
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON; send a JSON object with Content-Type: application/json.", None
    msg = str(first.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if param and msg.startswith(f"{param}: "):
        msg = msg[len(param) + 2:]
    if first.get("type") == "missing":
        msg = "this field is required"
    elif first.get("type") == "extra_forbidden":
        msg = "unknown parameter; remove it (this server refuses what it would otherwise ignore)"
    return f"{param + ': ' if param else ''}{msg}", param


class ParamError(ValueError):
    """Raise inside a pydantic validator to name the offending field as ``param`` of the 400."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def install_not_found_routes(app: FastAPI) -> None:
    """Unknown /v1 paths answer 404 and known paths with the wrong method 405, both in the envelope
    (without this, the UI mounted at / would answer them with its own page)."""
    from starlette.routing import Match

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    def first_match(scope) -> object | None:
        for route in app.router.routes:
            if route.matches(scope)[0] == Match.FULL:
                return route
        return None

    # HEAD, OPTIONS, TRACE too: otherwise the UI mounted at / answers them, outside the envelope
    @app.api_route("/v1/{rest:path}", methods=[*methods, "HEAD", "OPTIONS", "TRACE"], include_in_schema=False)
    async def _unknown(request: Request, rest: str):
        path = request.url.path
        this = first_match(request.scope)
        allowed = [m for m in methods if first_match({**request.scope, "method": m}) not in (None, this)]
        if allowed:
            raise ApiError(405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}.",
                           headers={"Allow": ", ".join(allowed)})
        raise ApiError(404, f"There is no route {request.method} {path}; see the API reference in docs/.",
                       type="not_found_error")


async def send_error(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """An error response written straight to ASGI ``send``: middleware answers before any route runs."""
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})
