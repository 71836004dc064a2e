"""Tables owned by serving: conversations and messages (each turn logged with the version that answered)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from tuneloop.core.ids import new_id, utcnow


class Conversation(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("conv"), primary_key=True)
    end_user: str = Field(default="anonymous", index=True, description="end user id or anonymous session id")
    channel: str = Field(default="api", description="api | web | cli")
    title: str = ""
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    # who may read and continue it (bot.ownership): the account whose key started it, or else the holder
    # of the token handed out when it started (only its hash is kept)
    owner_id: str | None = Field(default=None, index=True, max_length=40)
    token_hash: str | None = Field(default=None, max_length=64)


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
        default=None, sa_type=String(16), description="verified | clarify | handoff | grounded | none (bot.memory.MemoryDecision)")
    memory_scores: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False),
        description="the best-scoring corrections for this turn: [{correction_id, score}], best first")

