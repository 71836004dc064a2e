"""Accounts, passwords (argon2), bearer API keys and the audit log."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlmodel import Session, select

from tuneloop.core import errors
from tuneloop.core.accounts.models import Account, ApiKey, AuditEvent, Role
from tuneloop.core.ids import utcnow

_hasher = PasswordHasher()
KEY_PREFIX = "tl-"


class AccountError(errors.InvalidInputError):
    pass


def audit(session: Session, *, actor: str, action: str, object_type: str, object_id: str, **detail: Any) -> None:
    """Append one audit event in the caller's transaction (so it commits or rolls back with the change)."""
    session.add(AuditEvent(actor=actor, action=action, object_type=object_type, object_id=object_id, detail=detail))


def create_account(session: Session, *, username: str, password: str, role: Role, actor: str = "system") -> Account:
    username = username.strip()
    if not username:
        raise AccountError("username must not be empty")
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")
    if session.exec(select(Account).where(Account.username == username)).first():
        raise AccountError(f"an account named {username!r} already exists")
    account = Account(username=username, password_hash=_hasher.hash(password), role=Role(role))
    session.add(account)
    audit(session, actor=actor, action="account.created", object_type="account", object_id=account.id, role=str(role))
    return account


def change_password(session: Session, username: str, new_password: str, *, actor: str,
                    current_password: str | None = None) -> Account:
    """Set a new password. ``current_password`` is checked when given (the signed-in form); the CLI,
    run by the operator, omits it."""
    account = get_account(session, username)
    if current_password is not None and authenticate_password(session, username, current_password) is None:
        raise AccountError("the current password is wrong")
    if len(new_password) < 8:
        raise AccountError("password must be at least 8 characters")
    account.password_hash = _hasher.hash(new_password)
    session.add(account)
    audit(session, actor=actor, action="account.password_changed", object_type="account", object_id=account.id)
    return account


def authenticate_password(session: Session, username: str, password: str) -> Account | None:
    account = session.exec(select(Account).where(Account.username == username)).first()
    if account is None or not account.active:
        return None
    try:
        _hasher.verify(account.password_hash, password)
    except VerificationError:
        return None
    return account


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, account: Account, name: str = "") -> tuple[ApiKey, str]:
    """Return the stored key record and the key itself, which is shown once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(account_id=account.id, name=name, prefix=key[:10], key_hash=_key_hash(key))
    session.add(record)
    audit(session, actor=account.username, action="apikey.created", object_type="apikey", object_id=record.id)
    return record, key


def revoke_api_key(session: Session, account: Account, key_id: str) -> ApiKey:
    record = session.get(ApiKey, key_id)
    if record is None or (record.account_id != account.id and account.role != Role.admin):
        raise AccountError(f"no API key {key_id!r} of yours")
    record.revoked_at = utcnow()
    session.add(record)
    audit(session, actor=account.username, action="apikey.revoked", object_type="apikey", object_id=key_id)
    return record


def account_for_key(session: Session, key: str) -> Account | None:
    record = session.exec(
        select(ApiKey).where(ApiKey.prefix == key[:10], ApiKey.key_hash == _key_hash(key), ApiKey.revoked_at == None)  # noqa: E711
    ).first()
    if record is None:
        return None
    account = session.get(Account, record.account_id)
    return account if account and account.active else None


def ensure_first_admin(session: Session, username: str, password: str) -> str | None:
    """Create the first admin if there is none. Returns a generated one-time password to print once,
    or None when an admin exists or the password came from settings."""
    if session.exec(select(Account).where(Account.role == Role.admin)).first():
        return None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    create_account(session, username=username, password=password, role=Role.admin)
    return generated


ROLE_RANK = {Role.user: 0, Role.staff: 1, Role.admin: 2}


def has_role(account: Account, needed: Role) -> bool:
    return ROLE_RANK[Role(account.role)] >= ROLE_RANK[needed]


def get_account(session: Session, username: str) -> Account:
    account = session.exec(select(Account).where(Account.username == username)).first()
    if account is None:
        raise AccountError(f"no account named {username!r}; see `tuneloop users list`")
    return account


def list_accounts(session: Session) -> list[Account]:
    return list(session.exec(select(Account).order_by(Account.created_at)).all())


def list_api_keys(session: Session, account: Account | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if account is not None:
        query = query.where(ApiKey.account_id == account.id)
    return list(session.exec(query).all())


def revoke_api_key_by_id(session: Session, key_id: str, *, actor: str = "cli") -> ApiKey:
    """Revoke any key (the CLI runs with the server's own rights)."""
    record = session.get(ApiKey, key_id)
    if record is None:
        raise AccountError(f"no API key {key_id!r}; see `tuneloop users list`")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        session.add(record)
        audit(session, actor=actor, action="apikey.revoked", object_type="apikey", object_id=key_id)
    return record
