"""The wire protocol of the chat API, laid out like OpenAI's API reference.

Fields are in the order of the spec (https://platform.openai.com/docs/api-reference/chat). Our
extensions are fenced in a commented block at the end of each model. Only what tuneloop serves is
declared; a request field this server cannot honour, or does not know, is refused (400 naming it)
rather than silently dropped.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from bot.choices import MAX_CHOICES
from bot.logprobs import ChoiceLogprobs
from bot.response_format import ResponseFormat
from bot.tools import MAX_PARALLEL_CALLS, NamedToolChoice, Tool, ToolCall, ToolChoice, ToolUse, call_text, tool_use
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
    ``developer`` is OpenAI's newer name for ``system`` and is treated as such. An assistant message
    may carry ``tool_calls`` (its content may then be null) and a ``tool`` message answers one
    (``bot.tools`` writes both into the text the model reads)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if value is None:  # allowed for an assistant message that only calls tools (below)
            return value
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

    @model_validator(mode="after")
    def _content_or_calls(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content must be a string or a list of text parts (null only for an assistant "
                             "message with tool_calls)")
        return self

    def as_dict(self) -> dict[str, str]:
        calls = [call_text(c.function.name, c.function.arguments) for c in self.tool_calls or []]
        return {"role": self.role, "content": "\n".join([self.content] * bool(self.content) + calls)}


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI chat parameters this server cannot honour: each is refused (400 naming it) unless it holds
# a value that asks for nothing beyond what is served anyway (name → (accepted values, why not)).
REFUSED_CHAT_PARAMETERS: dict[str, tuple[tuple[Any, ...], str]] = {
    "audio": ((None,), "audio output is not supported"),
    "function_call": ((None, "none"), "function calling is not supported"),
    "functions": ((None, []), "function calling is not supported"),
    "metadata": ((None, {}), "metadata is kept with stored completions only, which this server does not offer"),
    "modalities": ((None, ["text"]), "only the text modality is served"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "this model does not reason in hidden steps; leave reasoning_effort unset"),
    "service_tier": ((None, "auto", "default"), "there is one service tier: 'auto' (or 'default')"),
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
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI in favour of max_completion_tokens.")
    metadata: Any = None
    modalities: Any = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Choices decoded together; choice 0 is stored.")
    parallel_tool_calls: bool | None = Field(None, description=f"Default true: up to {MAX_PARALLEL_CALLS} calls a reply.")
    prediction: Any = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    prompt_cache_key: str | None = Field(None, description="Accepted: a caching hint that never changes the answer.")
    reasoning_effort: Any = None
    response_format: ResponseFormat | None = None
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
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
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

    _grammar: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _refuse_what_cannot_be_served(self) -> "ChatCompletionRequest":
        for name, (accepted, why) in REFUSED_CHAT_PARAMETERS.items():
            if getattr(self, name) not in accepted:
                raise ParamError(name, why)
        return self

    @model_validator(mode="after")
    def _choose_grammar(self) -> "ChatCompletionRequest":
        """The grammar the reply is held to: a required tool call's, or response_format's (not both)."""
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs", "top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or []]
        if self.tool_choice not in (None, "none", "auto") and not names:
            raise ParamError("tool_choice", "tool_choice asks for a call but the request has no tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ParamError("tool_choice", f"no tool is named {self.tool_choice.function.name!r}")
        use = self.tool_use
        formatted = self.response_format.grammar if self.response_format else None
        if use is not None and use.required and formatted:
            raise ParamError("response_format", "a reply that must call a tool cannot also be response_format's "
                             "JSON; drop one of them")
        self._grammar = (use.grammar() if use else None) or formatted
        return self

    @property
    def tool_use(self) -> ToolUse | None:
        return tool_use(self.tools, self.tool_choice, self.parallel_tool_calls)

    @property
    def end_user(self) -> str | None:
        return self.user or self.safety_identifier

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if value[-1].role not in ("user", "tool"):
            raise ValueError("the last message must come from the user (or a tool, answering a call)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return check_logit_bias(value)

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
            # a grammar's JSON repeats itself by design ("}, {" …): the repetition guard would cut it
            repetition_ngram=0 if self._grammar else defaults.repetition_guard_ngram,
            grammar=self._grammar,
            grammar_param="response_format" if self.response_format and self.response_format.grammar else "tool_choice",
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            response_format=self.response_format.as_sent() if self.response_format else None,
            n=self.n or 1,
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
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
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
    memory_outcome: str | None = Field(None, description="verified (the reply is an approved answer), clarify "
                                       "(the reply asks whether the customer means one approved question, or lists a few by number; answer "
                                       "yes, the number, or no), handoff "
                                       "(no approved answer covered it: passed to staff), grounded (approved answers were "
                                       "in the prompt), none; null when memory is off")
    conversation_token: str | None = Field(None, description=CONVERSATION_TOKEN)
    # -------------------------------------------------------------------------------------------


class ToolCallDelta(ToolCall):
    index: int


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
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

    def delta(self, content: str | None, *, first: bool = False, index: int = 0, logprobs: ChoiceLogprobs | None = None,
              tool_calls: list[ToolCall] | None = None) -> ChatCompletionChunk:
        calls = [ToolCallDelta(index=i, **call.model_dump()) for i, call in enumerate(tool_calls)] if tool_calls else None
        delta = Delta(role="assistant" if first else None, content=content, tool_calls=calls)
        return ChatCompletionChunk(**self.common, choices=[ChunkChoice(index=index, delta=delta, logprobs=logprobs)])

    def finish(self, reason: str, index: int = 0) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.common, choices=[ChunkChoice(index=index, delta=Delta(), finish_reason=reason)])

    def usage(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.common, choices=[], usage=usage)
