"""One error family for every package, rendered by one handler as OpenAI's error envelope:
{"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


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
        super().__init__(message)
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneloopError)
    async def _tuneloop_error(_request: Request, exc: TuneloopError):
        return JSONResponse(error_body(str(exc), exc.error_type, exc.param, exc.code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException):
        type_ = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error"}.get(
            exc.status_code, "invalid_request_error")
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = "The request body is not valid JSON; send a JSON object with Content-Type: application/json."
        else:
            message = f"{param + ': ' if param else ''}{first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)
