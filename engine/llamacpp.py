"""``engine.protocol.Engine`` on llama.cpp (``llama-cpp-python``'s C API): the default on a CPU.

A decode step through transformers on a 135M model is mostly Python and per-op overhead; llama.cpp
runs the same weights (each version's GGUF, ``engine.gguf_files``) several times faster. One decode
thread owns every llama.cpp context. Each chat is one *sequence* of a shared KV cache, and every step
decodes one llama.cpp batch holding the next token of each running chat plus the prompt tokens of
chats that just arrived (continuous batching: a new chat starts at the next step, not after the
others finish). A chat that finishes, or whose client went away, frees its sequence at once.

Prompts are laid out and tokenized by the model's own tokenizer files, read without transformers
(``engine.chat_tokenizer``, ``engine.prompting``; the vocabulary is the GGUF's), and text, stop
strings and max_tokens are handled by the same code as in the transformers engine
(``engine.text_stream``), so both engines give the same answer for the same weights under greedy
decoding. Nothing here imports torch.

A new chat starts from the KV cells of the prompt fed before it, as far as the two agree (the chat
template, the system prompt, earlier turns: ``engine.prompt_cache``), so only the rest is fed.

``swap`` loads the new version's GGUF into its own model and context before it serves; chats already
decoding finish on the old one, which is freed when its last chat ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from engine.chat_tokenizer import ChatTokenizer, eos_ids
from engine.gguf_files import ensure_gguf
from engine.llamacpp_model import LlamaModel, put_token
from engine.prompting import PromptTooLongError, raw_prompt_ids, scored_answer_ids, trim_to_budget
from engine.protocol import AnswerScore, Completion, NotReadyError, SamplingParams, ServedVersion, VersionSpec
from engine.llamacpp_requests import ChatRequest, ScoreRequest, log_softmax_at, sample_next
from engine.text_stream import advance, request_events
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


class LlamaCppEngine:
    """Serves registry versions through llama.cpp, many chats per decode step."""

    def __init__(self, settings: Settings, spec_for: Callable[[ServedVersion], VersionSpec]):
        self.settings, self.spec_for = settings, spec_for
        self.current: LlamaModel | None = None
        self._extra: dict[str, LlamaModel] = {}
        self._retired: list[LlamaModel] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[ChatRequest | None] = queue.Queue()
        self._waiting: list[ChatRequest] = []
        self._running: list[ChatRequest] = []
        self.peak_batch = 0  # the most chats decoded in one step so far (for tests and /metrics)
        self._thread = threading.Thread(target=self._run, name="tuneloop-llamacpp", daemon=True)
        self._thread.start()

    # --- Engine ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.current is not None

    @property
    def serving_id(self) -> str | None:
        return self.current.spec.id if self.current else None

    def wait_until_available(self, stop: threading.Event | None, poll_seconds: float) -> None:
        """Nothing to wait for: the files are local."""

    def prepare(self, version: ServedVersion) -> None:
        """Write the version's GGUF now if it has none, so the swap after the pointer moves is quick."""
        ensure_gguf(self.spec_for(version), self.settings)

    def swap(self, version: ServedVersion) -> None:
        with self._lock:
            if self.current is not None and self.current.spec.id == version.id:
                return
            loaded = self._extra.pop(version.id, None) or self._load(version)
            previous, self.current = self.current, loaded
            if previous is not None:
                self._retired.append(previous)  # freed by the decode thread once its chats end
        log.info("llama.cpp serving %s (was %s)", version.id, previous.spec.id if previous else "nothing")

    def stream(self, version: ServedVersion, messages: list[dict[str, str]],
               params: SamplingParams) -> Iterator[str | Completion]:
        loaded = self.loaded_for(version)
        params.check_token_ids(loaded.n_vocab)
        request = ChatRequest(loaded, self.encode(loaded, messages, params.max_tokens), params)
        self._queue.put(request)
        return self._events(request)

    def stream_prompt(self, version: ServedVersion, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        loaded = self.loaded_for(version)
        params.check_token_ids(loaded.n_vocab)
        context = min(self.settings.context_budget, loaded.max_context)
        request = ChatRequest(loaded, raw_prompt_ids(loaded.tokenizer, prompt, params.max_tokens, context), params)
        self._queue.put(request)
        return self._events(request)

    def count_prompt_tokens(self, version: ServedVersion, messages: list[dict[str, str]],
                            max_tokens: int) -> tuple[int, Any]:
        loaded = self.loaded_for(version)
        return len(self.encode(loaded, messages, max_tokens)), loaded.tokenizer

    def generate(self, version: ServedVersion, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        for item in self.stream(version, messages, params):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("the llama.cpp engine ended a request without an answer")

    def generate_many(self, version: ServedVersion, conversations: list[list[dict[str, str]]],
                      params: SamplingParams) -> list[Completion]:
        """Answers to many conversations, decoded together (the gates ask this way)."""
        streams = [self.stream(version, messages, params) for messages in conversations]
        return [next(item for item in stream if isinstance(item, Completion)) for stream in streams]

    def score_answers(self, version: ServedVersion, conversations: list[list[dict[str, str]]],
                      answers: list[str], answer_tokens: int | None = None) -> list[AnswerScore]:
        """Every pair is one sequence of the next decode steps, fed beside the running chats."""
        loaded = self.loaded_for(version)
        context = min(self.settings.context_budget, loaded.max_context)
        requests, leads = [], {}
        for messages, answer in zip(conversations, answers, strict=True):
            key = repr(messages)
            request = ScoreRequest(loaded, *scored_answer_ids(loaded.tokenizer, messages, answer, context,
                                                               answer_tokens),
                                    lead=leads.get(key))
            leads.setdefault(key, request)
            requests.append(request)
        for request in requests:
            self._queue.put(request)
        return [request.result() for request in requests]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        for loaded in {id(m): m for m in [self.current, *self._extra.values(), *self._retired] if m}.values():
            loaded.close()
        self.current = None

    # --- helpers -------------------------------------------------------------------------------------
    def loaded_for(self, version: ServedVersion) -> LlamaModel:
        if self.current is None:
            raise NotReadyError("The model is still loading; retry in a few seconds.")
        if version.id == self.current.spec.id:
            return self.current
        with self._lock:
            if version.id not in self._extra:
                for old in self._extra.values():
                    self._retired.append(old)
                self._extra = {version.id: self._load(version)}
            return self._extra[version.id]

    def encode(self, loaded: LlamaModel, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
        context = min(self.settings.context_budget, loaded.max_context)
        if context - max_tokens <= 0:
            raise PromptTooLongError(f"max_tokens={max_tokens} leaves no room for the prompt in a context of "
                                     f"{context} tokens; lower max_tokens.")
        return trim_to_budget(loaded.tokenizer, messages, context - max_tokens)[1]

    def _load(self, version: ServedVersion) -> LlamaModel:
        spec = self.spec_for(version)
        started = time.perf_counter()
        tokenizer = ChatTokenizer(spec.base_dir)
        loaded = LlamaModel(spec, self.settings, tokenizer, eos_ids(spec.base_dir, tokenizer))
        log.info("llama.cpp loaded %s in %.1fs", spec.id, time.perf_counter() - started)
        return loaded

    @staticmethod
    def _events(request: ChatRequest) -> Iterator[str | Completion]:
        """The request's deltas, then its Completion. Closing the iterator early (a client that went
        away) cancels the request: its sequence is freed at the next step."""
        try:
            yield from request_events(request.events)
        finally:
            request.cancelled = True

    # --- the decode thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._running and not self._waiting:
                item = self._queue.get()
                if item is None:
                    return
                self._waiting.append(item)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                self._waiting.append(item)
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001  (every chat in the step learns why; the thread lives on)
                log.exception("llama.cpp decode failed")
                for request in self._running:
                    request.events.put(("error", exc))
                    request.done = True
                    request.loaded.release(request.seq, request.reserved)
                    request.loaded.prompt_cache.clear()
                self._running = []
            self._free_retired()

    def _admit(self) -> None:
        """Move waiting chats into the running set while a sequence and cache room are free."""
        still_waiting = []
        for request in self._waiting:
            loaded = request.loaded
            if request.cancelled:
                continue
            if isinstance(request, ScoreRequest) and request.waits_for_lead():
                still_waiting.append(request)
                continue
            if loaded.free_seqs and loaded.has_room(request.reserved):
                request.seq = loaded.free_seqs.pop(0)
                loaded.tokens_reserved += request.reserved
                request.fed = loaded.prompt_cache.start(request.seq, getattr(request, "cache_ids", request.prompt_ids))
                self._running.append(request)
            else:
                still_waiting.append(request)
        self._waiting = still_waiting

    def _step(self) -> None:
        for request in [r for r in self._running if r.cancelled]:
            self._drop(request)
        self._admit()
        self.peak_batch = max(self.peak_batch, len(self._running))
        by_model: dict[int, list[ChatRequest]] = {}
        for request in self._running:
            by_model.setdefault(id(request.loaded), []).append(request)
        for requests in by_model.values():
            self._decode_once(requests[0].loaded, requests)

    def _decode_once(self, loaded: LlamaModel, requests: list[ChatRequest]) -> None:
        """One llama_decode: the next token of each running chat, and prompt tokens of new ones
        (a long prompt is fed over several steps)."""
        batch, n, wants_logits, prefilled, scored, scores_done = loaded.batch, 0, [], [], [], []
        for request in requests:
            if request.fed < len(request.prompt_ids):
                room = loaded.n_batch - n
                if room <= 0:
                    continue
                chunk = request.prompt_ids[request.fed:request.fed + room]
                scoring = isinstance(request, ScoreRequest)
                for offset, token in enumerate(chunk):
                    position = request.fed + offset
                    read = scoring and request.score_from <= position < len(request.prompt_ids) - 1
                    put_token(batch, n + offset, token, position, request.seq, read)
                    if read:
                        scored.append((request, n + offset, request.prompt_ids[position + 1]))
                request.fed += len(chunk)
                n += len(chunk)
                if scoring:
                    if request.fed == len(request.prompt_ids):
                        scores_done.append(request)
                elif request.fed == len(request.prompt_ids):
                    batch.logits[n - 1] = 1
                    wants_logits.append((request, n - 1))
                    prefilled.append(request)
            elif n < loaded.n_batch:
                position = len(request.prompt_ids) + len(request.generated) - 1
                put_token(batch, n, request.generated[-1], position, request.seq, True)
                wants_logits.append((request, n))
                n += 1
        if n == 0:
            return
        batch.n_tokens = n
        status = loaded.lc.llama_decode(loaded.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} (the KV cache is full: lower max_batch_size or "
                               "raise TUNELOOP_LLAMACPP_CONTEXT_TOKENS)")
        for request, row, target in scored:
            logits = np.ctypeslib.as_array(loaded.lc.llama_get_logits_ith(loaded.ctx, row), shape=(loaded.n_vocab,))
            request.logprob += log_softmax_at(logits, target)
        for request in {id(r): r for r, _, _ in scored if r.lead is None}.values():
            if loaded.tokens_reserved + len(request.cache_ids) <= loaded.n_ctx:  # the other answers start here
                loaded.prompt_cache.remember(request.seq, request.cache_ids)
        for request in scores_done:
            self._drop(request)
            request.done = True
            request.events.put(("score", AnswerScore(request.logprob, request.tokens)))
        for request in prefilled[-1:]:  # the newest prompt: the likeliest start of the next chat
            if loaded.tokens_reserved + len(request.prompt_ids) <= loaded.n_ctx:
                loaded.prompt_cache.remember(request.seq, request.prompt_ids)
        for request, row in wants_logits:
            pointer = loaded.lc.llama_get_logits_ith(loaded.ctx, row)
            logits = np.ctypeslib.as_array(pointer, shape=(loaded.n_vocab,))
            token = sample_next(request, logits)
            if not advance(request, token):  # text, stop strings, max_tokens: as transformers does
                self._drop(request)

    def _drop(self, request: ChatRequest) -> None:
        self._running.remove(request)
        request.loaded.release(request.seq, request.reserved)

    def _free_retired(self) -> None:
        busy = {id(r.loaded) for r in self._running + self._waiting}
        with self._lock:
            keep = []
            for loaded in self._retired:
                if id(loaded) in busy or loaded is self.current or loaded in self._extra.values():
                    keep.append(loaded)
                else:
                    loaded.close()
            self._retired = keep
