"""The wire shapes of tuneloop's resources beside chat completions: the model list (OpenAI's), and the
conversations, messages and ratings (tuneloop's own, shaped like OpenAI list objects). Requests refuse
unknown fields (400 naming them), as ``bot.protocol``'s do."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.protocol import CONVERSATION_TOKEN


# --- models --------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- conversations (tuneloop's own resources, shaped like OpenAI list objects) -------------------
class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, description="End-user id (default: anonymous).")
    title: str = ""


class MessageObject(BaseModel):
    id: str
    object: Literal["conversation.message"] = "conversation.message"
    created_at: int
    position: int
    role: str
    content: str
    model_version_id: str | None = None
    latency_ms: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class ConversationObject(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    updated_at: int
    end_user: str
    channel: str
    title: str
    messages: list[MessageObject] | None = None
    conversation_token: str | None = Field(None, description=CONVERSATION_TOKEN)


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


# --- ratings -------------------------------------------------------------------------------------
class RatingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Literal["up", "down", 1, -1]
    comment: str = Field("", max_length=4000)
    rater: str | None = Field(None, max_length=200, description="End-user or session id (default: anonymous).")


class RatingObject(BaseModel):
    id: str
    object: Literal["message.rating"] = "message.rating"
    message_id: str
    value: int
    comment: str
    rater: str
    model_version_id: str | None
    created_at: int
