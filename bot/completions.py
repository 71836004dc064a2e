"""OpenAI's legacy completions (``POST /v1/completions``): raw prompt text in, the text that follows out.

This is the prompt/completion workflow of the older fine-tuning guides: a model fine-tuned on
``{"prompt": "...<separator>", "completion": " ...<stop>"}`` lines is asked with the prompt plus the
separator and ``stop=[<stop>]``. The prompt is tokenized as written (no chat template, no system
prompt), as the trainer did (``retrain.trainer.batching.encode_prompt_completion``). Completions are not
stored as conversations: they carry no chat history to rate or correct.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.logprobs import CompletionLogprobs, completion_logprobs
from bot.protocol import StreamOptions, Usage, check_logit_bias, fingerprint
from engine.protocol import Completion, SamplingParams
from registry.models import ModelVersion
from tuneloop.core.settings import Settings


# --- request ----------------------------------------------------------------------------------------
class CompletionRequest(BaseModel):
    """Fields in the order of OpenAI's reference; anything else is refused (400 naming it)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str]
    best_of: int | None = None
    echo: bool | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(None, ge=0, le=5, description="Each token's log-probability and this many "
                                 "likeliest alternatives.")
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_text_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a string, or a list holding one string)")
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("the prompt is empty")
        return value

    @field_validator("best_of", "n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only 1 is supported; send separate requests (with different seeds) instead")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported; the prompt you sent is the prompt")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("insertion (suffix) is not supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return check_logit_bias(value)

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_sampling_params(self, defaults: Settings) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens or 16,  # OpenAI's default for this endpoint
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            stop=[s for s in stop if s], seed=self.seed,
            frequency_penalty=self.frequency_penalty or 0.0, presence_penalty=self.presence_penalty or 0.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()}, logprobs=self.logprobs,
        )


# --- responses --------------------------------------------------------------------------------------
class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str
    usage: Usage | None = None


def completion_id() -> str:
    return f"cmpl-{secrets.token_hex(12)}"


class TextCompletionFactory:
    """The objects of one answer: same id, created and model in each chunk of a stream."""

    def __init__(self, model: str, version_id: str):
        self.common = dict(id=completion_id(), created=int(time.time()), model=model,
                           system_fingerprint=fingerprint(version_id))

    def whole(self, done: Completion) -> TextCompletion:
        choice = CompletionChoice(text=done.text, finish_reason=done.finish_reason,
                                  logprobs=completion_logprobs(done.logprobs))
        return TextCompletion(**self.common, choices=[choice], usage=Usage.of(done.prompt_tokens, done.completion_tokens))

    def delta(self, text: str, finish_reason: str | None = None, done: Completion | None = None) -> TextCompletion:
        """A chunk of a stream; the last (``done`` given) carries every token's logprobs, when asked."""
        logprobs = completion_logprobs(done.logprobs) if done is not None else None
        return TextCompletion(**self.common, choices=[CompletionChoice(text=text, finish_reason=finish_reason,
                                                                       logprobs=logprobs)])

    def usage(self, done: Completion) -> TextCompletion:
        return TextCompletion(**self.common, choices=[], usage=Usage.of(done.prompt_tokens, done.completion_tokens))


# --- generation -------------------------------------------------------------------------------------
def stream_completion(runtime: Any, version: ModelVersion, prompt: str, params: SamplingParams):
    """Validate, then return the engine's stream (text deltas, then one Completion). Raises
    ``PromptTooLongError`` (naming max_tokens or prompt) or ``CompletionsUnavailableError``."""
    return runtime.stream_prompt(version, prompt, params)
