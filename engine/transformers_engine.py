"""The transformers engine as serving sees it: registry versions in, answers out, on this machine.

It owns one ``TransformersDecoder`` (the batched decoder, ``engine.transformers_model``) for the version in
production, loads the next version fully before swapping it in, and keeps at most one other version
loaded for requests that name it. Prompts are trimmed from the oldest turn to fit the context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from engine.prompting import PromptTooLongError, raw_prompt_ids, scored_answer_ids, trim_to_budget
from engine.protocol import AnswerScore, Completion, NotReadyError, SamplingParams, ServedVersion, VersionSpec
from engine.transformers_model import LoadedModel, TransformersDecoder, answer_logprobs
from tuneloop.core.settings import Settings


class TransformersEngine:
    """``engine.protocol.Engine`` on transformers + peft (CPU or GPU)."""

    def __init__(self, settings: Settings, spec_for: Callable[[ServedVersion], VersionSpec]):
        self.settings = settings
        self.spec_for = spec_for  # the registry knows where a version's files are
        self.decoder: TransformersDecoder | None = None
        self._extra: dict[str, LoadedModel] = {}  # non-production versions asked for by id
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.decoder is not None

    @property
    def serving_id(self) -> str | None:
        return self.decoder.current.spec.id if self.decoder else None

    def wait_until_available(self, stop: threading.Event | None, poll_seconds: float) -> None:
        """Nothing to wait for: the model files are local."""

    def prepare(self, version: ServedVersion) -> None:
        """Nothing to do before the pointer moves: every process loads the version after the move, in
        the background, and swaps only once it is loaded."""

    def swap(self, version: ServedVersion) -> None:
        with self._lock:
            if self.decoder is not None and self.decoder.current.spec.id == version.id:
                return
            loaded = self._extra.pop(version.id, None) or self._load(version)
            if self.decoder is None:
                self.decoder = TransformersDecoder(loaded, max_batch_size=self.settings.max_batch_size)
            else:
                self.decoder.swap(loaded)

    def stream(self, version: ServedVersion, messages: list[dict[str, str]],
               params: SamplingParams) -> Iterator[str | Completion]:
        loaded = self.loaded_for(version)
        params.check_token_ids(loaded.model.config.vocab_size)
        return self.decoder.stream(self.encode(loaded, messages, params.max_tokens), params, loaded)

    def generate(self, version: ServedVersion, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        loaded = self.loaded_for(version)
        params.check_token_ids(loaded.model.config.vocab_size)
        return self.decoder.generate(self.encode(loaded, messages, params.max_tokens), params, loaded)

    def stream_prompt(self, version: ServedVersion, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        loaded = self.loaded_for(version)
        params.check_token_ids(loaded.model.config.vocab_size)
        context = min(self.settings.context_budget, loaded.max_context)
        return self.decoder.stream(raw_prompt_ids(loaded.tokenizer, prompt, params.max_tokens, context), params, loaded)

    def count_prompt_tokens(self, version: ServedVersion, messages: list[dict[str, str]],
                            max_tokens: int) -> tuple[int, Any]:
        loaded = self.loaded_for(version)
        return len(self.encode(loaded, messages, max_tokens)), loaded.tokenizer

    def score_answers(self, version: ServedVersion, conversations: list[list[dict[str, str]]],
                      answers: list[str], answer_tokens: int | None = None) -> list[AnswerScore]:
        """All pairs in padded forward passes on the decode thread, between decode steps."""
        loaded = self.loaded_for(version)
        context = min(self.settings.context_budget, loaded.max_context)
        pairs = [scored_answer_ids(loaded.tokenizer, messages, answer, context, answer_tokens)
                 for messages, answer in zip(conversations, answers, strict=True)]
        scored = self.decoder.run_exclusive(lambda: answer_logprobs(loaded, pairs))
        return [AnswerScore(logprob, tokens) for logprob, tokens in scored]

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()

    # --- helpers -----------------------------------------------------------------------------------
    def loaded_for(self, version: ServedVersion) -> LoadedModel:
        """The loaded model for ``version``: production, or one other version kept loaded on demand."""
        if self.decoder is None:
            raise NotReadyError("The model is still loading; retry in a few seconds.")
        if version.id == self.decoder.current.spec.id:
            return self.decoder.current
        with self._lock:
            if version.id not in self._extra:
                self._extra.clear()  # keep at most one extra version in memory
                self._extra[version.id] = self._load(version)
            return self._extra[version.id]

    def encode(self, loaded: LoadedModel, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
        """The conversation as token ids, trimmed from the oldest turn to fit the context budget."""
        context = min(self.settings.context_budget, loaded.max_context)
        budget = context - max_tokens
        if budget <= 0:
            raise PromptTooLongError(f"max_tokens={max_tokens} leaves no room for the prompt in a context of "
                                     f"{context} tokens; lower max_tokens.")
        _, ids = trim_to_budget(loaded.tokenizer, messages, budget)
        return ids

    def _load(self, version: ServedVersion) -> LoadedModel:
        return LoadedModel.load(self.spec_for(version), device=self.settings.device, dtype=self.settings.dtype)
