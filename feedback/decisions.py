"""A reviewer's verdict on one assistant message (fine or corrected), which takes it out of the review
queue. Apart from the queue (feedback.review) because writing a correction for a message records one
(feedback.corrections), and the queue shows a message's corrections: both build on this."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, Session, SQLModel

from tuneloop.core.accounts.service import audit
from tuneloop.core.ids import utcnow


class ReviewStatus(StrEnum):
    open = "open"
    fine = "fine"
    corrected = "corrected"


class ReviewDecision(SQLModel, table=True):
    """A reviewer's verdict on one assistant message in the queue."""

    message_id: str = Field(foreign_key="message.id", primary_key=True)
    status: ReviewStatus = Field(default=ReviewStatus.open, sa_type=String(16))
    decided_by: str = ""
    decided_at: datetime = Field(default_factory=utcnow)


def mark_message(session: Session, message_id: str, status: ReviewStatus, *, actor: str) -> ReviewDecision:
    decision = session.get(ReviewDecision, message_id) or ReviewDecision(message_id=message_id)
    decision.status, decision.decided_by, decision.decided_at = ReviewStatus(status), actor, utcnow()
    session.add(decision)
    audit(session, actor=actor, action=f"review.{status}", object_type="message", object_id=message_id)
    session.flush()
    return decision
