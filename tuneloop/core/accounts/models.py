"""Accounts and the audit log: shared by every package that has a write route."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


class Role(StrEnum):
    user = "user"
    staff = "staff"
    admin = "admin"


class Account(SQLModel, table=True):
    """A staff member or admin. End users are not accounts: they chat anonymously or by their own id."""

    id: str = Field(default_factory=lambda: new_id("usr"), primary_key=True)
    username: str = Field(index=True, unique=True, max_length=80)
    password_hash: str
    role: Role = Field(default=Role.staff, sa_type=String(16))
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A bearer key for an account. Only a hash is stored; the key is shown once at creation."""

    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True)
    account_id: str = Field(foreign_key="account.id", index=True)
    name: str = ""
    prefix: str = Field(index=True, max_length=16)
    key_hash: str
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class AuditEvent(SQLModel, table=True):
    """Who did what to which object, and when. Append-only."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(index=True, description="account username, 'system', or an end-user id")
    action: str = Field(index=True, description="e.g. correction.approved, version.promoted")
    object_type: str = Field(index=True)
    object_id: str = Field(index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
