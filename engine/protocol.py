"""What every engine speaks: sampling settings in, completions out, and which version to load.

Serving (``bot.runtime``) and the gates hand requests to an engine through these types only, so a
new backend (llama.cpp, an OpenAI-compatible upstream) plugs in without the callers branching on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneloop.core.errors import InvalidInputError, UnavailableError


class CompletionsUnavailableError(InvalidInputError):
    """This engine answers chats only (an upstream server): use /v1/chat/completions."""

    param = "model"


class TokenNotInVocabularyError(InvalidInputError):
    param = "logit_bias"


class NotReadyError(UnavailableError):
    """The model is still loading; callers answer 503 and the client retries."""

    code = "model_not_ready"


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    frequency_penalty: float = 0.0  # OpenAI's: minus penalty × how often a token was generated so far
    presence_penalty: float = 0.0  # minus penalty once a token was generated at all
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id → added to its logit
    repetition_ngram: int = 10  # greedy only: stop before a repeated sentence or a repeated run of this many tokens; 0 off
    grammar: str | None = None  # GBNF the reply must match (engine.structured), e.g. a JSON schema's
    grammar_param: str = "response_format"  # the request field a grammar the engine cannot apply is blamed on
    logprobs: int | None = None  # None: none; k: each token's log-probability and its k likeliest alternatives
    response_format: dict | None = None  # OpenAI's, as sent: what an upstream server enforces itself
    n: int = 1  # answers to one request: the serving runtime starts n streams (bot.choices); an engine decodes one

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.logit_bias)

    def check_token_ids(self, vocab_size: int) -> None:
        """Raise ``TokenNotInVocabularyError`` for a ``logit_bias`` token the served model does not have:
        it is the request's fault (400), and found here, before decoding, it cannot end an answer midway."""
        unknown = sorted(token for token in self.logit_bias if not 0 <= token < vocab_size)
        if unknown:
            raise TokenNotInVocabularyError(
                f"logit_bias: token id {unknown[0]} is not in the served model's vocabulary (ids 0 to "
                f"{vocab_size - 1}); use token ids of this model's tokenizer.")


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    version_id: str
    logprobs: list[Any] | None = None  # engine.logprobs.TokenLogprob per token, when asked


@dataclass(frozen=True)
class AnswerScore:
    """How likely the served weights find one answer as the assistant's reply to one conversation:
    the summed log-probability of its tokens (end-of-turn marker included), from prompt evaluation
    alone. Correction memory's answer selection compares these (``feedback.memory.selection``)."""

    logprob: float
    tokens: int


class ScoringUnavailableError(RuntimeError):
    """The engine cannot score answers (an upstream server): selection falls back to retrieval alone."""


@dataclass(frozen=True)
class VersionSpec:
    """What to load: a base model directory and an optional LoRA adapter directory."""

    id: str
    base_dir: Path
    adapter_dir: Path | None = None


class ServedVersion(Protocol):
    """The fields of a registry version that an engine reads to serve it (``registry.models.ModelVersion``
    has them; the engine floor sits below the registry, so it names only what it needs)."""

    id: str
    name: str
    adapter_path: str | None
    hosted_model: str | None


class Engine(Protocol):
    """A backend that answers chats for registry versions: the serving runtime talks only to this.

    Messages arrive complete (system prompt and memory already in place); an engine may trim the
    oldest turns to fit its context. ``swap`` loads a version fully before serving it, so in-flight
    answers finish on the version they started with.
    """

    @property
    def ready(self) -> bool:
        """True once the engine can answer (a model is loaded, or the upstream answers)."""

    @property
    def serving_id(self) -> str | None:
        """The version id the engine serves, or None before the first swap."""

    def wait_until_available(self, stop: threading.Event | None, poll_seconds: float) -> None:
        """Block until the engine can take a version (at least one check); ``stop`` ends the wait."""

    def prepare(self, version: ServedVersion) -> None:
        """Called before production moves to ``version``; raise to refuse the move (e.g. an upstream
        that cannot load the adapter)."""

    def swap(self, version: ServedVersion) -> None:
        """Serve ``version`` from now on (a no-op if it is served already)."""

    def stream(self, version: ServedVersion, messages: list[dict[str, str]],
               params: SamplingParams) -> Iterator[str | Completion]:
        """Text deltas, then one ``Completion``. Errors about the request raise before the first delta."""

    def generate(self, version: ServedVersion, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        """The whole answer at once."""

    def stream_prompt(self, version: ServedVersion, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        """Like ``stream`` for a raw text prompt (OpenAI's legacy completions): no chat template."""

    def count_prompt_tokens(self, version: ServedVersion, messages: list[dict[str, str]],
                            max_tokens: int) -> tuple[int, Any]:
        """Tokens of ``messages`` as this engine would feed them (trimmed to fit), and the tokenizer that
        counted them (None where the engine can only estimate: an upstream)."""

    def score_answers(self, version: ServedVersion, conversations: list[list[dict[str, str]]],
                      answers: list[str], answer_tokens: int | None = None) -> list[AnswerScore]:
        """For each (conversation, answer) pair, the answer's log-likelihood as the next assistant turn
        (prompt evaluation only, the pairs batched; only the first ``answer_tokens`` tokens of each
        answer when given). Raises ``ScoringUnavailableError`` where the engine
        has no access to its logits."""

    def close(self) -> None:
        """Stop background threads; the engine answers nothing afterwards."""
