"""Tables owned by feedback: ratings, review decisions and corrections."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String, Text, UniqueConstraint
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


class DistillKind(StrEnum):
    task = "task"  # questions and answers from a description of the business
    docs = "docs"  # questions and answers grounded in document chunks
    paraphrase = "paraphrase"  # other wordings of approved corrections' questions


class DistillStatus(StrEnum):
    pending = "pending"  # estimated, not started
    running = "running"
    stopped = "stopped"  # interrupted or out of budget: resumable
    failed = "failed"  # the teacher failed: resumable once the cause is fixed
    completed = "completed"


class DistillRun(SQLModel, table=True):
    """One distillation run: what the teacher was asked, what it wrote and what that cost.

    Counters and ``progress`` change in the same transaction as the corrections each teacher reply
    stores, so a run stopped at any point resumes exactly after what it stored."""

    id: str = Field(default_factory=lambda: new_id("distill"), primary_key=True)
    kind: DistillKind = Field(sa_type=String(16))
    status: DistillStatus = Field(default=DistillStatus.pending, index=True, sa_type=String(16))
    params: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False),
        description="teacher, temperature, budget and the kind's inputs (description, chunks or target corrections)",
    )
    progress: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False), description="requests sent, next unit of work")
    requested: int = Field(0, description="question/answer pairs asked for")
    stored: int = Field(0, description="pairs stored as corrections")
    duplicates: int = Field(0, description="pairs dropped as near-duplicates of each other or of existing corrections")
    malformed: int = Field(0, description="replies or items that were not usable question/answer pairs")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_tokens: int = 0
    estimated_cost: float | None = Field(None, description="USD; None when no teacher price is configured")
    cost: float | None = Field(None, description="USD spent so far; None when no teacher price is configured")
    message: str = Field("", sa_column=Column(Text, nullable=False),
                         description="why the run stopped or failed")
    created_by: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
