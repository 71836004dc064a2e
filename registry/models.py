"""Tables owned by the model registry: every servable version, the production pointer, the gate
report that judged each candidate and the golden set the gates hold it to."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


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


class GateReport(SQLModel, table=True):
    """The verdict of the four gates on one candidate against the production version of the time:
    every question with both versions' answers (``items``) and the aggregate per gate (``summary``)."""

    id: str = Field(default_factory=lambda: new_id("gate"), primary_key=True)
    candidate_version_id: str = Field(index=True)
    baseline_version_id: str
    created_at: datetime = Field(default_factory=utcnow)
    passed: bool = False
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # An admin may promote a version whose gates failed, with a written reason (recorded here).
    override_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    overridden_by: str | None = None
    overridden_at: datetime | None = None


class GoldenExample(SQLModel, table=True):
    """A must-pass question curated by admins."""

    id: str = Field(default_factory=lambda: new_id("gold"), primary_key=True)
    question: str = Field(sa_column=Column(Text, nullable=False))
    answer: str = Field(sa_column=Column(Text, nullable=False))
    key_facts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = "admin"
    created_at: datetime = Field(default_factory=utcnow)
