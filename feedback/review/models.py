"""The review queue's table: a reviewer's verdict on one assistant message."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, SQLModel

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
