"""The serving runtime of one API process: which version it serves, and how it follows promotions.

Every API process polls the production pointer (one integer) every ``version_poll_seconds``. When it
changes, the process loads the new version fully in the background and only then swaps it into the
engine: requests never see a half-loaded model, in-flight answers finish on the old version, and no
request fails during a promotion or rollback.

With ``serving_backend=upstream`` there is no local engine: generation goes to ``bot.upstream`` and
the runtime is ready once the upstream answers. It follows the pointer all the same: switching to a
version with a LoRA adapter first has the upstream load it (``upstream_lora_loading``); if the upstream
refuses, the process keeps serving the version it had, logs why (``swap_error``, shown by /readyz)
and tries again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot import versions
from bot.engine import Completion, LoadedModel, LocalEngine, SamplingParams
from bot.models import ModelVersion
from bot.prompting import prompt_ids, system_with_memory, trim_to_budget, with_system_prompt
from tuneloop.settings import Settings

log = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """The model is still loading; callers answer 503 and the client retries."""


class ServingRuntime:
    def __init__(self, settings: Settings, db: Engine):
        self.settings = settings
        self.db = db
        self.engine: LocalEngine | None = None
        self.pointer_revision: int | None = None
        self.load_error: str | None = None
        self.swap_error: str | None = None  # why following the last production change failed, if it did
        self.upstream_version_id: str | None = None  # the version served through the upstream
        self._extra: dict[str, LoadedModel] = {}  # non-production versions asked for by id
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self.memory = None  # set by the app: an object with context_for(question) -> (text, correction ids)
        self.upstream = None
        if settings.serving_backend == "upstream":
            from bot.upstream import UpstreamBackend

            self.upstream = UpstreamBackend(settings)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, *, background: bool = True) -> None:
        if background:
            threading.Thread(target=self._start, name="tuneloop-runtime", daemon=True).start()
        else:
            self._start(follow=False)

    def _start(self, follow: bool = True) -> None:
        if self.upstream is not None:  # nothing to load here; wait (bounded by stop()) until it answers
            while not self.upstream.check() and follow and not self._stop.wait(self.settings.version_poll_seconds):
                pass
            self._follow_pointer()
        else:
            try:
                self.sync_with_pointer()
            except Exception as exc:  # surfaced by /readyz and 503s, never a crash loop
                log.exception("loading the production model failed")
                self.load_error = str(exc)
                return
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
        if self.engine is not None:
            self.engine.close()

    @property
    def ready(self) -> bool:
        return self.engine is not None or (self.upstream is not None and self.upstream.reachable)

    @property
    def production_id(self) -> str | None:
        return self.engine.current.spec.id if self.engine else self.upstream_version_id

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
            if self.upstream is not None:  # the upstream loads the version's adapter (or refuses: raises)
                self.upstream.model_for(version)
                self.upstream_version_id = version.id
                return
            if self.engine is not None and self.engine.current.spec.id == version.id:
                return
            loaded = self._extra.pop(version.id, None) or self._load(version)
            if self.engine is None:
                self.engine = LocalEngine(loaded, max_batch_size=self.settings.max_batch_size)
            else:
                self.engine.swap(loaded)

    def prepare(self, version: ModelVersion) -> None:
        """Call before production moves to ``version``: an upstream loads the version's LoRA adapter now,
        so a refusal (``UpstreamAdapterError``) stops the promotion instead of surfacing after it. A local
        engine loads the version after the move, in the background, as every other process does."""
        if self.upstream is not None:
            self.upstream.model_for(version)

    def _load(self, version: ModelVersion) -> LoadedModel:
        spec = versions.version_spec(version, self.settings)
        return LoadedModel.load(spec, device=self.settings.device, dtype=self.settings.dtype)

    def loaded_for(self, version: ModelVersion) -> LoadedModel:
        """The loaded model for ``version``: production, or one other version kept loaded on demand."""
        if self.engine is None:
            raise NotReadyError("The model is still loading; retry in a few seconds.")
        if version.id == self.engine.current.spec.id:
            return self.engine.current
        with self._swap_lock:
            if version.id not in self._extra:
                self._extra.clear()  # keep at most one extra version in memory
                self._extra[version.id] = self._load(version)
            return self._extra[version.id]

    # --- generation --------------------------------------------------------------------------------
    def encode(self, loaded: LoadedModel, messages: list[dict[str, str]], max_tokens: int, memory: str = "") -> list[int]:
        """System prompt + history, trimmed from the oldest turn to fit the context budget."""
        budget = min(self.settings.context_budget, loaded.max_context) - max_tokens
        if budget <= 0:
            from bot.prompting import PromptTooLongError

            raise PromptTooLongError(
                f"max_tokens={max_tokens} leaves no room for the prompt in a context of "
                f"{min(self.settings.context_budget, loaded.max_context)} tokens; lower max_tokens."
            )
        full = self._with_system(messages, memory)
        _, ids = trim_to_budget(loaded.tokenizer, full, budget)
        return ids

    def _with_system(self, messages: list[dict[str, str]], memory: str = "") -> list[dict[str, str]]:
        return with_system_prompt(system_with_memory(self.settings.resolved_system_prompt, memory), messages)

    def recall(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        """Correction memory for the last user message: context text and the correction ids used."""
        if self.memory is None or not self.settings.memory_enabled:
            return "", []
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        try:
            return self.memory.context_for(question)
        except Exception:  # memory is a help, never a reason to fail an answer
            log.exception("correction memory lookup failed; answering without it")
            return "", []

    def stream(
        self, version: ModelVersion, messages: list[dict[str, str]], params: SamplingParams, *, memory: str = ""
    ) -> Iterator[str | Completion]:
        """Decode an answer. ``memory`` (from ``recall``) is appended to the system prompt."""
        if self.upstream is not None:
            return self.upstream.stream(version, self._with_system(messages, memory), params)
        loaded = self.loaded_for(version)
        ids = self.encode(loaded, messages, params.max_tokens, memory)
        return self.engine.stream(ids, params, loaded)

    def generate(self, version: ModelVersion, messages: list[dict[str, str]], params: SamplingParams,
                 *, memory: str = "") -> Completion:
        if self.upstream is not None:
            return self.upstream.generate(version, self._with_system(messages, memory), params)
        loaded = self.loaded_for(version)
        return self.engine.generate(self.encode(loaded, messages, params.max_tokens, memory), params, loaded)


__all__ = ["ServingRuntime", "NotReadyError", "prompt_ids"]
