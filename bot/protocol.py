"""The wire protocol of the chat API, laid out like OpenAI's API reference.

Fields are in the order of the spec (https://platform.openai.com/docs/api-reference/chat). Our
extensions are fenced in a commented block at the end of each model. Only what tuneloop serves is
declared; unknown request fields are ignored, as OpenAI-compatible servers usually do, except those
whose silent dropping would change the answer (``n > 1``, ``logprobs``, tools), which are rejected.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.protocol import SamplingParams
from tuneloop.core.errors import ParamError
from tuneloop.core.settings import Settings


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


# --- requests ----------------------------------------------------------------------------------

def check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    """OpenAI's shape: token id (as a string key) → bias in [-100, 100]."""
    for key, bias in (value or {}).items():
        if not str(key).isdigit():
            raise ValueError(f"keys are token ids (integers as strings), not {key!r}")
        if not -100 <= bias <= 100:
            raise ValueError(f"the bias of token {key} must be in [-100, 100], not {bias}")
    return value


class ChatMessage(BaseModel):
    """One message. ``content`` is a string or a list of text parts (``[{"type": "text", "text": …}]``),
    which is joined into one string; other part types (images, audio, files) are rejected.
    ``developer`` is OpenAI's newer name for ``system`` and is treated as such."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            if not isinstance(value, str):
                raise ValueError("content must be a string or a list of text parts")
            return value
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"only text content parts are supported ({{'type': 'text', 'text': ...}}); got {kind!r}")
            texts.append(part["text"])
        return "".join(texts)

    @field_validator("role", mode="after")
    @classmethod
    def _developer_is_system(cls, value: str) -> str:
        return "system" if value == "developer" else value

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI chat parameters this server cannot honour: each is refused (400 naming it) unless it holds
# a value that asks for nothing beyond what is served anyway (name → (accepted values, why not)).
REFUSED_CHAT_PARAMETERS: dict[str, tuple[tuple[Any, ...], str]] = {
    "audio": ((None,), "audio output is not supported"),
    "function_call": ((None, "none"), "function calling is not supported"),
    "functions": ((None, []), "function calling is not supported"),
    "logprobs": ((None, False), "log probabilities are not supported; leave logprobs unset or false"),
    "metadata": ((None, {}), "metadata is kept with stored completions only, which this server does not offer"),
    "modalities": ((None, ["text"]), "only the text modality is served"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "this model does not reason in hidden steps; leave reasoning_effort unset"),
    "response_format": ((None, {"type": "text"}), "only text answers are served ({'type': 'text'}); JSON mode "
                        "and JSON schemas are not enforced by this server"),
    "service_tier": ((None, "auto", "default"), "there is one service tier: 'auto' (or 'default')"),
    "tool_choice": ((None, "none"), "tool calling is not supported"),
    "tools": ((None, []), "tool calling is not supported; send the request without tools"),
    "top_logprobs": ((None, 0), "log probabilities are not supported"),
    "verbosity": ((None,), "verbosity applies to reasoning models; leave it unset"),
    "web_search_options": ((None,), "web search is not supported"),
}


class ChatCompletionRequest(BaseModel):
    """Every OpenAI parameter is declared: honoured, or refused by ``_refuse_what_cannot_be_served``;
    an unknown field is refused too (400 naming it), so nothing is silently ignored."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    audio: Any = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    function_call: Any = None
    functions: Any = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI in favour of max_completion_tokens.")
    metadata: Any = None
    modalities: Any = None
    n: int | None = None
    parallel_tool_calls: bool | None = Field(None, description="Accepted: without tools it changes nothing.")
    prediction: Any = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    prompt_cache_key: str | None = Field(None, description="Accepted: a caching hint that never changes the answer.")
    reasoning_effort: Any = None
    response_format: Any = None
    safety_identifier: str | None = Field(None, description="End-user id when ``user`` is not sent.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    service_tier: Any = None
    stop: str | list[str] | None = None
    store: bool | None = Field(
        None, description="false: the turn is not logged (no conversation, message or rating target; never review "
        "or phrasing-suggestion material), e.g. for evaluation traffic. Unlike OpenAI, tuneloop stores by default, "
        "because reviewing logged turns is what it is for.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    tool_choice: Any = None
    tools: Any = None
    top_logprobs: Any = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = Field(None, description="End-user id; conversations are stored under it.")
    verbosity: Any = None
    web_search_options: Any = None

    # --- tuneloop extensions ------------------------------------------------------------------
    conversation_id: str | None = Field(
        None, description="Continue this stored conversation: the server appends only the messages that follow "
        "the stored ones (send the full history, as OpenAI clients do, or just the new user message).",
    )
    conversation_token: str | None = Field(
        None, max_length=200, description="Without an API key: the token the conversation's first answer returned; "
        "without it, conversation_id is not found.")
    # -------------------------------------------------------------------------------------------

    @model_validator(mode="after")
    def _refuse_what_cannot_be_served(self) -> "ChatCompletionRequest":
        for name, (accepted, why) in REFUSED_CHAT_PARAMETERS.items():
            if getattr(self, name) not in accepted:
                raise ParamError(name, why)
        return self

    @property
    def end_user(self) -> str | None:
        return self.user or self.safety_identifier

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if value[-1].role != "user":
            raise ValueError("the last message must come from the user")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return check_logit_bias(value)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported; send n separate requests (with different seeds) instead")
        return value

    def to_sampling_params(self, defaults: Settings) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or defaults.max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            stop=[s for s in stop if s],
            seed=self.seed,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            repetition_ngram=defaults.repetition_guard_ngram,
        )


# --- chat completion responses ------------------------------------------------------------------
CONVERSATION_TOKEN = (
    "Only when a conversation starts without an API key, and only once: its secret. Send it as conversation_token "
    "to continue the conversation, or as the X-Conversation-Token header to read it (bot.ownership).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str

    # --- tuneloop extensions ------------------------------------------------------------------
    conversation_id: str | None = Field(description="null for a new conversation sent with store: false")
    message_id: str | None = Field(description="id of the stored assistant message; rate it with "
                                   "POST /v1/messages/{message_id}/rating (null with store: false)")
    memory_correction_ids: list[str] = Field(default_factory=list,
                                             description="approved corrections used: the verified answer, or "
                                             "those given to the model as context")
    memory_outcome: str | None = Field(None, description="verified (the reply is an approved answer), handoff "
                                       "(no approved answer covered it: passed to staff), grounded (approved answers were "
                                       "in the prompt), none; null when memory is off")
    conversation_token: str | None = Field(None, description=CONVERSATION_TOKEN)
    # -------------------------------------------------------------------------------------------


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    # --- tuneloop extensions ------------------------------------------------------------------
    conversation_id: str | None
    message_id: str | None
    conversation_token: str | None = Field(None, description=CONVERSATION_TOKEN)
    # -------------------------------------------------------------------------------------------


def fingerprint(version_id: str) -> str:
    """Changes whenever a different model version answers, as OpenAI's fingerprint does."""
    return f"fp_tuneloop_{version_id}"


class ChunkFactory:
    """Builds the chunks of one stream: same id, created, model and extension ids in each."""

    def __init__(self, model: str, version_id: str, conversation_id: str | None, message_id: str | None,
                 conversation_token: str | None = None):
        self.common = dict(id=completion_id(), created=int(time.time()), model=model,
                           system_fingerprint=fingerprint(version_id), conversation_id=conversation_id,
                           message_id=message_id, conversation_token=conversation_token)

    def delta(self, content: str, *, first: bool = False) -> ChatCompletionChunk:
        delta = Delta(role="assistant", content=content) if first else Delta(content=content)
        return ChatCompletionChunk(**self.common, choices=[ChunkChoice(delta=delta)])

    def finish(self, reason: str) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.common, choices=[ChunkChoice(delta=Delta(), finish_reason=reason)])

    def usage(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.common, choices=[], usage=usage)


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
