"""The serving runtime of one API process: which version it serves, and how it follows promotions.

Every API process polls the production pointer (one integer) every ``version_poll_seconds``. When it
changes, the process loads the new version fully in the background and only then swaps it into the
engine: requests never see a half-loaded model, in-flight answers finish on the old version, and no
request fails during a promotion or rollback.

Which engine answers is a setting (``serving_backend``: ``engine.backends``); the runtime treats
them all alike. With ``upstream`` (vLLM or any OpenAI-compatible server) switching to a version with a
LoRA adapter first has the upstream load it (``upstream_lora_loading``); if an engine refuses a
version, the process keeps serving the one it had, logs why (``swap_error``, shown by /readyz) and
tries again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.memory import Memory, MemoryDecision
from bot.choices import start_choices
from bot.verified import verified_stream
from engine.backends import engine_for
from engine.prompting import with_system_prompt, system_with_memory
from engine.protocol import Completion, SamplingParams, Engine as ModelEngine
from registry import versions
from registry.models import ModelVersion
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


class ServingRuntime:
    """Follows the production pointer and hands each request to the engine ``serving_backend`` names.
    It never asks which engine that is: ``engine.protocol.Engine`` is all it knows."""

    def __init__(self, settings: Settings, db: Engine):
        self.settings = settings
        self.db = db
        self.engine: ModelEngine = engine_for(settings, lambda version: versions.version_spec(version, settings))
        self.pointer_revision: int | None = None
        self.load_error: str | None = None
        self.swap_error: str | None = None  # why following the last production change failed, if it did
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self.memory: Memory | None = None  # set by the app (feedback.memory's CorrectionMemory)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, *, background: bool = True) -> None:
        if background:
            threading.Thread(target=self._start, name="tuneloop-runtime", daemon=True).start()
        else:
            self._start(follow=False)

    def _start(self, follow: bool = True) -> None:
        self.engine.wait_until_available(self._stop if follow else None, self.settings.version_poll_seconds)
        try:
            self.sync_with_pointer()
        except Exception as exc:  # surfaced by /readyz and 503s, never a crash loop
            if not self.engine.ready:
                log.exception("loading the production model failed")
                self.load_error = str(exc)
                return
            log.exception("switching to the production version failed; still serving %s",
                          self.production_id or "nothing yet")
            self.swap_error = str(exc)
        while follow and not self._stop.wait(self.settings.version_poll_seconds):
            self._follow_pointer()

    def _follow_pointer(self) -> None:
        """One poll of the pointer. A failed switch keeps the current version and is retried at the next
        poll; each new reason is logged once, not every poll."""
        try:
            self.sync_with_pointer()
            self.swap_error = None
        except Exception as exc:
            if str(exc) != self.swap_error:
                log.exception("switching to the new production version failed; still serving %s",
                              self.production_id or "nothing yet")
            self.swap_error = str(exc)

    def stop(self) -> None:
        self._stop.set()
        self.engine.close()

    @property
    def ready(self) -> bool:
        return self.engine.ready

    @property
    def production_id(self) -> str | None:
        return self.engine.serving_id

    # --- following promotions ----------------------------------------------------------------------
    def sync_with_pointer(self) -> bool:
        """Load and swap to the production version if the pointer moved. Returns True on a swap."""
        with Session(self.db) as session:
            pointer = versions.production_pointer(session)
            if pointer.revision == self.pointer_revision:
                return False
            version = session.get(ModelVersion, pointer.version_id)
        self.swap(version)
        self.pointer_revision = pointer.revision
        return True

    def swap(self, version: ModelVersion) -> None:
        """Load ``version`` fully, then serve it. Requests already decoding finish on the old one."""
        with self._swap_lock:
            self.engine.swap(version)

    def prepare(self, version: ModelVersion) -> None:
        """Call before production moves to ``version``: an engine may refuse it here (an upstream that
        cannot load the adapter raises ``UpstreamAdapterError``), which stops the promotion."""
        self.engine.prepare(version)

    # --- generation --------------------------------------------------------------------------------
    def with_system(self, messages: list[dict[str, str]], memory: str = "") -> list[dict[str, str]]:
        """The conversation as the engine receives it: system prompt (with memory's context) first."""
        return with_system_prompt(system_with_memory(self.settings.resolved_system_prompt, memory), messages)

    def recall(self, messages: list[dict[str, str]], version: ModelVersion | None = None) -> MemoryDecision | None:
        """Correction memory's decision for the last user message, the served ``version``'s weights
        scoring the candidate answers (None when memory is off or failed: the model answers alone)."""
        if self.memory is None or not self.settings.memory_enabled:
            return None
        try:
            scoring = version is not None and self.settings.memory_answer_scoring
            return self.memory.decide(messages, _VersionScorer(self, version) if scoring else None)
        except Exception:  # memory is a help, never a reason to fail an answer
            log.exception("correction memory lookup failed; answering without it")
            return None

    def answer_scorer(self, version: ModelVersion | None = None) -> "_VersionScorer | None":
        """The served weights scoring answers (production's when ``version`` is None; None before a
        model is loaded): what calibration fits answer selection with."""
        if version is None:
            if self.production_id is None:
                return None
            with Session(self.db) as session:
                version = session.get(ModelVersion, self.production_id)
        return _VersionScorer(self, version)

    def verified(self, version: ModelVersion, messages: list[dict[str, str]], answer: str,
                 params: SamplingParams) -> Iterator[str | Completion]:
        """Stream the approved ``answer`` as the reply (``bot.verified``), counting tokens as decoding would."""
        prompt_tokens, tokenizer = self.engine.count_prompt_tokens(version, self.with_system(messages),
                                                                   params.max_tokens)
        return start_choices(lambda p: verified_stream(answer, p, prompt_tokens=prompt_tokens, version_id=version.id,
                                                       tokenizer=tokenizer), params)

    def stream(
        self, version: ModelVersion, messages: list[dict[str, str]], params: SamplingParams, *, memory: str = ""
    ) -> Iterator[str | Completion]:
        """Decode an answer (``params.n`` of them: ``bot.choices``). ``memory`` (from ``recall``) is
        appended to the system prompt."""
        prompt = self.with_system(messages, memory)
        return start_choices(lambda p: self.engine.stream(version, prompt, p), params)

    def stream_prompt(self, version: ModelVersion, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        """A legacy completion: the prompt as written, no system prompt, no memory."""
        return self.engine.stream_prompt(version, prompt, params)

    def generate(self, version: ModelVersion, messages: list[dict[str, str]], params: SamplingParams,
                 *, memory: str = "") -> Completion:
        return self.engine.generate(version, self.with_system(messages, memory), params)


class _VersionScorer:
    """``bot.memory.AnswerScorer``: the engine scoring answers with one version's weights."""

    def __init__(self, runtime: ServingRuntime, version: ModelVersion):
        self.runtime, self.version = runtime, version
        self.version_id = version.id
        self.system_prompt = runtime.settings.resolved_system_prompt

    def __call__(self, conversations: list[list[dict[str, str]]], answers: list[str],
                 answer_tokens: int | None = None):
        return self.runtime.engine.score_answers(self.version, conversations, answers, answer_tokens)


__all__ = ["ServingRuntime"]
