"""Who may read and continue a conversation.

A conversation holds what a customer wrote (order numbers, card digits), so its id alone must not open
it. A conversation started with an API key belongs to that key's account; one started without a key
(the web chat, the API used anonymously) gets a secret token, handed out once when it starts and
stored only as a hash. Staff read and continue every conversation: reviewing them is their job.

Anyone else gets the same 404 as for an id that does not exist, so ids cannot be probed. Conversations
stored before owners existed have neither owner nor token: only staff see them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from bot.models import Conversation
from tuneloop.core.accounts.models import Account, Role

TOKEN_PREFIX = "convtok-"


@dataclass(frozen=True)
class Caller:
    """Who asks: the signed-in account (None without a key), whether it is staff, and the conversation
    token it sent (anonymous callers)."""

    account_id: str | None = None
    staff: bool = False
    token: str | None = None

    @classmethod
    def of(cls, account: Account | None, token: str | None = None) -> "Caller":
        if account is None:
            return cls(token=token or None)
        return cls(account_id=account.id, staff=account.role in (Role.staff, Role.admin), token=token or None)


ANONYMOUS = Caller()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def token_hash(token: str) -> str:
    """SHA-256 is enough: the token is 192 random bits, not a password to be guessed."""
    return hashlib.sha256(token.encode()).hexdigest()


def may_access(conversation: Conversation, caller: Caller) -> bool:
    if caller.staff:
        return True
    if conversation.owner_id is not None:
        return caller.account_id == conversation.owner_id
    return (conversation.token_hash is not None and caller.token is not None
            and hmac.compare_digest(conversation.token_hash, token_hash(caller.token)))


def owner_of_new(caller: Caller) -> tuple[str | None, str | None]:
    """(owner account id, token) for a conversation ``caller`` starts: a token only for anonymous callers."""
    if caller.account_id is not None:
        return caller.account_id, None
    return None, new_token()
