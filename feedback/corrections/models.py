"""The corrections table: expert answers, their revisions (one lineage) and their review state."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


class CorrectionStatus(StrEnum):
    draft = "draft"
    submitted = "submitted"
    approved = "approved"
    rejected = "rejected"
    superseded = "superseded"


class CorrectionSource(StrEnum):
    conversation = "conversation"  # written for an assistant message in the review queue
    knowledge = "knowledge"  # a standalone question/answer pair added by staff
    imported = "imported"  # from `tuneloop data import`
    synthetic = "synthetic"  # written by a teacher model (distillation), reviewed by staff
    thumbs_up = "thumbs_up"  # a liked answer kept as a positive example


class Correction(SQLModel, table=True):
    """The answer the bot should have given. Revisions of one correction share ``lineage_id``;
    editing an approved correction creates a new revision that needs approval again."""

    id: str = Field(default_factory=lambda: new_id("corr"), primary_key=True)
    lineage_id: str = Field(index=True, description="id of the first revision")
    revision: int = 1
    source: CorrectionSource = Field(default=CorrectionSource.conversation, sa_type=String(16))
    message_id: str | None = Field(default=None, foreign_key="message.id", index=True)
    conversation_id: str | None = Field(default=None, index=True)
    question: str = Field(sa_column=Column(Text, nullable=False), description="the user's question, cleaned up")
    answer: str = Field(sa_column=Column(Text, nullable=False), description="the expert answer")
    key_facts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    alternative_questions: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False),
        description="other ways customers ask this question: retrieved by correction memory, trained on")
    status: CorrectionStatus = Field(default=CorrectionStatus.draft, index=True, sa_type=String(16))
    author: str = Field(index=True)
    reviewer: str | None = None
    review_reason: str = ""
    pii_masked: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    origin: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False),
        description="synthetic: teacher, prompt, source chunk, parent correction",
    )
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    decided_at: datetime | None = Field(default=None, index=True)

    @property
    def split_key(self) -> str:
        """The lineage that decides this correction's train/validation side: a paraphrase goes with
        the correction it rewords (``origin["parent_lineage_id"]``), everything else with its own."""
        return (self.origin or {}).get("parent_lineage_id") or self.lineage_id
