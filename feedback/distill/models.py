"""The distillation runs table: what a teacher was asked, what it wrote and what it cost."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


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
