"""Tables owned by serving: conversations, messages, model versions and the production pointer."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from tuneloop.db import new_id, utcnow


class Conversation(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("conv"), primary_key=True)
    end_user: str = Field(default="anonymous", index=True, description="end user id or anonymous session id")
    channel: str = Field(default="api", description="api | web | cli")
    title: str = ""
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    """One turn. Assistant turns record which model version answered and how."""

    id: str = Field(default_factory=lambda: new_id("msg"), primary_key=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True)
    position: int = Field(description="0-based order within the conversation")
    role: str = Field(description="system | user | assistant")
    content: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    # assistant turns only
    model_version_id: str | None = Field(default=None, index=True)
    latency_ms: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    memory_correction_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    memory_outcome: str | None = Field(
        default=None, sa_type=String(16), description="verified | grounded | none (feedback.memory.MemoryDecision)")
    memory_scores: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False),
        description="the best-scoring corrections for this turn: [{correction_id, score}], best first")


class VersionStatus(StrEnum):
    candidate = "candidate"
    approved = "approved"
    production = "production"
    retired = "retired"
    rejected = "rejected"
    deleted = "deleted"


class ModelVersion(SQLModel, table=True):
    """What can be served: a base model plus an optional LoRA adapter, or a hosted model id.

    Serving needs only ``base_model``, ``adapter_path`` and ``hosted_model``; the lifecycle and
    provenance fields are maintained by the registry in retrain/ and shown by the APIs.
    """

    id: str = Field(primary_key=True, description="v0, v1, …")
    number: int = Field(index=True, unique=True)
    name: str = Field(index=True, unique=True, description="tuneloop-v7-<suffix>")
    base_model: str = Field(description="resolved local directory of the base model, or the bundled alias")
    adapter_path: str | None = Field(default=None, description="LoRA adapter directory, relative to the model store")
    hosted_model: str | None = Field(default=None, description="fine-tuned model id served by an upstream API")
    prompt_format: str = Field(default="chat", description="chat | legacy (separator + stop sequence)")
    parent_id: str | None = Field(default=None, index=True)
    snapshot_id: str | None = None
    job_id: str | None = None
    status: VersionStatus = Field(default=VersionStatus.candidate, index=True, sa_type=String(16))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate_report_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    status_changed_at: datetime = Field(default_factory=utcnow)
    status_changed_by: str = "system"


class ProductionPointer(SQLModel, table=True):
    """Exactly one row: the version every API process serves. ``revision`` grows on every change so
    processes notice a promotion or rollback by polling one integer."""

    id: int = Field(default=1, primary_key=True)
    version_id: str = Field(foreign_key="modelversion.id")
    revision: int = 1
    changed_at: datetime = Field(default_factory=utcnow)
    changed_by: str = "system"
