"""Tables owned by retraining: snapshots, jobs and their events/metrics, uploaded files
and the scheduler's state."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


class DatasetSnapshot(SQLModel, table=True):
    """An immutable, content-hashed freeze of the approved examples. Files live under
    ``datasets_dir/<id>/`` (train.jsonl, valid.jsonl in both formats, manifest.json)."""

    id: str = Field(primary_key=True, description="snap_<first 12 hex of content hash>")
    content_hash: str = Field(index=True, unique=True)
    parent_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = "system"
    n_train: int = 0
    n_valid: int = 0
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    path: str = Field(description="directory relative to datasets_dir")


class JobStatus(StrEnum):
    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"  # stopped at a step boundary with a resumable checkpoint; resume queues it again
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class FineTuneJob(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("ftjob", "-"), primary_key=True)
    backend: str = Field(default="local", description="local | openai")
    parent_version_id: str = Field(index=True)
    snapshot_id: str | None = Field(default=None, index=True)
    training_file_id: str | None = None
    validation_file_id: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    suffix: str | None = None
    seed: int = 42
    status: JobStatus = Field(default=JobStatus.validating_files, index=True, sa_type=String(24))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_by: str = "system"
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    trained_tokens: int | None = None
    result_files: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    result_version_id: str | None = None
    hosted_job_id: str | None = None
    cancel_requested: bool = False
    pause_requested: bool = False  # the training child pauses at its next step boundary
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    # What training actually used (defaults filled in, n_epochs raised to min_steps, total_steps), set
    # when training starts; None before. ``hyperparameters`` keeps what was asked for.
    effective_hyperparameters: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    method: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True),
                                          description='{"type": "dpo", "beta": …}; None means supervised')
    user_metadata: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True),
                                                 description="OpenAI's job metadata (up to 16 string pairs)")


class JobEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="finetunejob.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    level: str = "info"
    type: str = Field(default="message", description="message | metrics")
    message: str = Field(sa_column=Column(Text, nullable=False))
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class JobMetric(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="finetunejob.id", index=True)
    step: int
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


class TrainingFile(SQLModel, table=True):
    """A file uploaded through ``POST /v1/files`` (OpenAI's files API)."""

    id: str = Field(default_factory=lambda: new_id("file", "-"), primary_key=True)
    filename: str
    purpose: str = "fine-tune"
    bytes: int = 0
    path: str
    created_at: datetime = Field(default_factory=utcnow)
    status: str = "processed"
    # Unreviewed data must not reach production: a staff member's job on this file needs a second
    # staff member's approval of it (an admin may train on it directly).
    created_by: str | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None


class SchedulerState(SQLModel, table=True):
    """One row: the scheduler's lease (so exactly one worker schedules) and its last decision."""

    id: int = Field(default=1, primary_key=True)
    holder: str | None = None
    lease_expires_at: datetime | None = None
    next_run_at: datetime | None = None
    last_tick_at: datetime | None = None
    last_decision: str = ""


class GateRunStatus(StrEnum):
    queued = "queued"
    running = "running"
    paused = "paused"  # stopped at a step boundary with a resumable checkpoint; resume queues it again
    succeeded = "succeeded"
    failed = "failed"


class GateRun(SQLModel, table=True):
    """A request to gate one candidate. The worker does the work (minutes on a CPU: two models answer
    every question), never an API request; the admin page and ``tuneloop models gates`` follow it."""

    id: str = Field(default_factory=lambda: new_id("gaterun"), primary_key=True)
    version_id: str = Field(index=True)
    status: GateRunStatus = Field(default=GateRunStatus.queued, index=True, sa_type=String(16))
    requested_by: str = "system"
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    stage: str = Field(default="waiting for the worker", description="what the run is doing now")
    report_id: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
