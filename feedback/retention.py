"""Data retention: conversations are kept ``retention_days`` after their last activity, and one end
user can be forgotten on request.

What goes: the conversations, their messages, the ratings and review decisions on those messages,
and corrections that were never approved (drafts, submissions, rejections: their text may still hold
unreviewed personal data). What stays: approved (and superseded) corrections, which are training
data; their text was PII-scrubbed at approval, and their link to the deleted message is cleared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlmodel import Session, select

from bot.models import Conversation, Message
from feedback.corrections.models import Correction, CorrectionStatus
from feedback.ratings.models import Rating
from feedback.decisions import ReviewDecision
from tuneloop.core.accounts.service import audit
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

KEPT_CORRECTIONS = (CorrectionStatus.approved, CorrectionStatus.superseded)
_CHUNK = 500  # ids per statement, well under SQLite's and PostgreSQL's parameter limits


def purge_expired(session: Session, settings: Settings, *, now: datetime | None = None) -> dict[str, int]:
    """Delete conversations idle for more than ``settings.retention_days`` (0 keeps everything).

    Meant for the worker's scheduler (daily is plenty); runs in the caller's transaction and writes
    one audit event when something was deleted. Returns the counts deleted per kind."""
    if settings.retention_days <= 0:
        return {}
    cutoff = (now or utcnow()) - timedelta(days=settings.retention_days)
    ids = list(session.exec(select(Conversation.id).where(Conversation.updated_at < cutoff)).all())
    counts = delete_conversations(session, ids)
    if counts["conversations"]:
        audit(session, actor="system", action="retention.purged", object_type="conversation", object_id="*",
              cutoff=cutoff.isoformat(), retention_days=settings.retention_days, **counts)
    return counts


def forget_end_user(session: Session, end_user: str, *, actor: str) -> dict[str, int]:
    """Delete everything one end user said or rated (a right-to-erasure request), and audit it.

    The audit event names the end user only by a SHA-256 of the id, so the log does not keep what
    was erased; ``sha256(<id>)`` shows that a given request was carried out."""
    ids = list(session.exec(select(Conversation.id).where(Conversation.end_user == end_user)).all())
    counts = delete_conversations(session, ids)
    counts["ratings"] += session.exec(delete(Rating).where(Rating.rater == end_user)).rowcount
    audit(session, actor=actor, action="end_user.forgotten", object_type="end_user",
          object_id="sha256:" + hashlib.sha256(end_user.encode()).hexdigest(), **counts)
    return counts


def delete_conversations(session: Session, conversation_ids: Iterable[str]) -> dict[str, int]:
    """Delete the conversations and what hangs off their messages (see the module docstring)."""
    counts = dict.fromkeys(
        ["conversations", "messages", "ratings", "review_decisions", "corrections_deleted", "corrections_kept"], 0)
    conversation_ids = list(conversation_ids)
    for start in range(0, len(conversation_ids), _CHUNK):
        chunk = conversation_ids[start:start + _CHUNK]
        message_ids = list(session.exec(select(Message.id).where(Message.conversation_id.in_(chunk))).all())
        derived = or_(Correction.conversation_id.in_(chunk), Correction.message_id.in_(message_ids))
        counts["corrections_kept"] += session.exec(
            update(Correction).where(derived, Correction.status.in_(KEPT_CORRECTIONS))
            .values(message_id=None, conversation_id=None)
        ).rowcount
        counts["corrections_deleted"] += session.exec(delete(Correction).where(derived)).rowcount
        counts["ratings"] += session.exec(delete(Rating).where(Rating.message_id.in_(message_ids))).rowcount
        counts["review_decisions"] += session.exec(
            delete(ReviewDecision).where(ReviewDecision.message_id.in_(message_ids))).rowcount
        counts["messages"] += session.exec(delete(Message).where(Message.conversation_id.in_(chunk))).rowcount
        counts["conversations"] += session.exec(delete(Conversation).where(Conversation.id.in_(chunk))).rowcount
    return counts
