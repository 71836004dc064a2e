"""What every router shares: OpenAI's error envelope, and dependency aliases for the database
session, settings, the serving runtime and the calling account (with role checks)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneloop.accounts import service as accounts
from tuneloop.accounts.models import Account, Role
from tuneloop.settings import Settings

log = logging.getLogger(__name__)


class ApiError(HTTPException):
    """An error answered in OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status_code: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.type, self.param, self.code = type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(error_body(str(exc.detail), exc.type, exc.param, exc.code), status_code=exc.status_code,
                            headers=exc.headers)

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

    @app.api_route("/v1/{rest:path}", methods=methods, include_in_schema=False)
    async def _unknown(request: Request, rest: str):
        path = request.url.path
        this = first_match(request.scope)
        allowed = [m for m in methods if first_match({**request.scope, "method": m}) not in (None, this)]
        if allowed:
            raise ApiError(405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}.",
                           headers={"Allow": ", ".join(allowed)})
        raise ApiError(404, f"There is no route {request.method} {path}; see the API reference in docs/.",
                       type="not_found_error")


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.db, expire_on_commit=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


def current_account(request: Request, session: SessionDep) -> Account | None:
    """The staff/admin account behind a bearer API key or the UI's login, or None (an end user)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        key = header[7:].strip()
        account = accounts.account_for_key(session, key)
        if account is None and key.startswith(accounts.KEY_PREFIX):
            raise ApiError(401, "This API key is invalid or revoked; create a new one with "
                                "`tuneloop users key create`.", type="authentication_error", code="invalid_api_key")
        return account
    return None


OptionalAccount = Annotated[Account | None, Depends(current_account)]


def require(role: Role):
    """Dependency factory: the caller must be signed in with at least ``role``."""

    def _check(account: OptionalAccount) -> Account:
        if account is None:
            article = "an" if role.value[0] in "aeiou" else "a"
            raise ApiError(401, f"This route needs {article} {role.value} account: "
                                "send 'Authorization: Bearer <API key>'.", type="authentication_error")
        if not accounts.has_role(account, role):
            raise ApiError(403, f"This route needs the {role.value} role; your account is {account.role}.",
                           type="permission_error")
        return account

    return _check


StaffAccount = Annotated[Account, Depends(require(Role.staff))]
AdminAccount = Annotated[Account, Depends(require(Role.admin))]
