"""Dependency aliases every router shares: the database session, the settings and the calling
account (with role checks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Account, Role
from tuneloop.core.errors import ApiError
from tuneloop.core.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.db, expire_on_commit=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


def current_account(request: Request) -> Account | None:
    """The staff/admin account behind a bearer API key or the UI's login, or None (an end user).

    The key is looked up in a session of its own, closed at once: a streamed answer lasts seconds,
    and holding a pooled connection for it would run the pool dry under concurrent chats. A bearer
    string that is not one of our keys (the official client insists on sending something) is an
    anonymous caller, with no database round trip."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        key = header[7:].strip()
        if not key.startswith(accounts.KEY_PREFIX):
            return None
        with Session(request.app.state.db, expire_on_commit=False) as session:
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
