"""What every router shares: OpenAI's error envelope, and dependency aliases for the database
session, settings, the serving runtime and the calling account (with role checks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlmodel import Session

from tuneloop.accounts import service as accounts
from tuneloop.accounts.models import Account, Role
from tuneloop.settings import Settings


class ApiError(HTTPException):
    """An error answered in OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status_code: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(status_code=status_code, detail=message)
        self.type, self.param, self.code = type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(error_body(str(exc.detail), exc.type, exc.param, exc.code), status_code=exc.status_code,
                            headers=exc.headers)

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
