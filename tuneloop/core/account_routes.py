"""Accounts and API keys over HTTP (thin: see tuneloop.core.accounts.service)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tuneloop.core.accounts import service
from tuneloop.core.accounts.models import Account, ApiKey, Role
from tuneloop.core.deps import AdminAccount, SessionDep, StaffAccount
from tuneloop.core.errors import ApiError

router = APIRouter(tags=["accounts"])


class KeyCreate(BaseModel):
    name: str = Field("", max_length=80)


class AccountCreate(BaseModel):
    username: str = Field(min_length=1, max_length=80)
    password: str = Field(min_length=8, description="at least 8 characters")
    role: Literal["staff", "admin"] = "staff"


def key_as_dict(record: ApiKey) -> dict:
    return {"id": record.id, "object": "api_key", "name": record.name, "prefix": record.prefix,
            "account_id": record.account_id, "created_at": record.created_at.isoformat(),
            "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None}


def account_as_dict(account: Account) -> dict:
    return {"id": account.id, "object": "account", "username": account.username, "role": str(account.role),
            "active": account.active, "created_at": account.created_at.isoformat()}


@router.post("/v1/auth/keys", status_code=201)
def create_key(body: KeyCreate, account: StaffAccount, session: SessionDep) -> dict:
    """A new key for the calling account. The key is in this response only; store it now."""
    record, key = service.create_api_key(session, account, body.name)
    session.commit()
    return {**key_as_dict(record), "key": key}


@router.delete("/v1/auth/keys/{key_id}")
def revoke_key(key_id: str, account: StaffAccount, session: SessionDep) -> dict:
    """Revoke one of your keys (admins: any key)."""
    try:
        record = service.revoke_api_key(session, account, key_id)
    except service.AccountError as exc:
        raise ApiError(404, str(exc), type="not_found_error", param="key_id") from exc
    session.commit()
    return key_as_dict(record)


@router.post("/v1/accounts", status_code=201)
def create_account(body: AccountCreate, admin: AdminAccount, session: SessionDep) -> dict:
    try:
        account = service.create_account(session, username=body.username, password=body.password,
                                         role=Role(body.role), actor=admin.username)
    except service.AccountError as exc:
        code = 409 if "already exists" in str(exc) else 400
        raise ApiError(code, str(exc), type="conflict_error" if code == 409 else "invalid_request_error") from exc
    session.commit()
    return account_as_dict(account)
