"""The ratings table: one thumbs-up or thumbs-down per rater and assistant message."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


class Rating(SQLModel, table=True):
    """A thumbs-up (+1) or thumbs-down (-1) on an assistant message; one per rater and message."""

    __table_args__ = (UniqueConstraint("message_id", "rater"),)

    id: str = Field(default_factory=lambda: new_id("rate"), primary_key=True)
    message_id: str = Field(foreign_key="message.id", index=True)
    value: int = Field(description="+1 or -1")
    comment: str = ""
    rater: str = Field(default="anonymous", description="end user id or session id")
    model_version_id: str | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
