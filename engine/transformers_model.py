"""The model runtime: loads a model version and decodes many chats together.

One decode thread owns the model. Requests go into a queue; the thread takes up to
``max_batch_size`` of them that target the same loaded version, prefills them together (left-padded)
and decodes them step by step with a shared KV cache, so concurrent chats share each forward pass.
Each request gets its own sampling settings, stop strings and seed, and a queue of text deltas, so
answers never interleave.

``swap(loaded)`` replaces the served version only after the new one is fully loaded; a batch that
is already running keeps the version it started with, so in-flight answers finish on the old model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import torch

from engine import logprobs, structured, text_stream
from engine.chat_tokenizer import end_of_reply_ids, padding_id
from engine.decode_state import DecodeState
from engine.modelstore import ModelNotFoundError
from engine.protocol import Completion, SamplingParams, VersionSpec

log = logging.getLogger(__name__)




def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    if preference != "auto":
        return getattr(torch, preference)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16  # measured on CPU here: 25 tok/s in bf16 vs 15 tok/s in fp32


class LoadedModel:
    """A model version in memory, adapter merged into the weights for fast decoding."""

    def __init__(self, spec: VersionSpec, model: Any, tokenizer: Any):
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.eos_ids = end_of_reply_ids(model.generation_config.eos_token_id, tokenizer)
        self.pad_id = padding_id(tokenizer, self.eos_ids)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))

    @cached_property
    def grammar_vocab(self) -> structured.GrammarVocab:
        """llama.cpp's view of this tokenizer's vocabulary, for constrained decoding (``engine.structured``)."""
        return structured.vocab_for_tokenizer(self.tokenizer, self.eos_ids)

    @classmethod
    def load(cls, spec: VersionSpec, *, device: str = "auto", dtype: str = "auto") -> "LoadedModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer


        if not (spec.base_dir / "config.json").is_file():
            raise ModelNotFoundError(f"Base model directory {spec.base_dir} is missing or incomplete.")
        if spec.adapter_dir is not None and not (spec.adapter_dir / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"Adapter for version {spec.id} is missing at {spec.adapter_dir}.")
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(spec.base_dir)
        model = AutoModelForCausalLM.from_pretrained(spec.base_dir, dtype=torch.float32)
        if spec.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter_dir).merge_and_unload()
        model = model.to(device=torch_device, dtype=torch_dtype).eval()
        log.info("loaded %s in %.1fs (%s, %s)", spec.id, time.perf_counter() - started, torch_device, torch_dtype)
        return cls(spec, model, tokenizer)


class _Request:
    def __init__(self, loaded: LoadedModel, prompt_ids: list[int], params: SamplingParams):
        self.loaded = loaded
        self.prompt_ids = prompt_ids
        self.params = params
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.generated: list[int] = []
        self.decode = lambda ids: loaded.tokenizer.decode(ids, skip_special_tokens=True)
        self.emitted = ""
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=loaded.device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        self.grammar = (structured.GrammarMask(loaded.grammar_vocab, params.grammar, params.grammar_param)
                        if params.grammar else None)
        self.token_logprobs: list = []


class _Job:
    """A callable run on the decode thread, between batches (e.g. perplexity for the gates)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class TransformersDecoder:
    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 8):
        self._current = loaded
        self.max_batch_size = max_batch_size
        self._queue: queue.Queue[_Request | _Job | None] = queue.Queue()
        self._pending: list[_Request] = []
        self._thread = threading.Thread(target=self._run, name="tuneloop-decode", daemon=True)
        self._thread.start()

    # --- public interface ----------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel:
        return self._current

    def swap(self, loaded: LoadedModel) -> LoadedModel:
        """Serve ``loaded`` from now on; returns the previous version. The caller loads it first."""
        previous, self._current = self._current, loaded
        log.info("serving %s (was %s)", loaded.spec.id, previous.spec.id)
        return previous

    def stream(
        self, prompt_ids: list[int], params: SamplingParams, loaded: LoadedModel | None = None
    ) -> Iterator[str | Completion]:
        """Text deltas as they are decoded, then one final Completion. The request is queued now, not at
        the first ``next``: streams started together decode together (n choices), and a request the
        engine refuses (a grammar it cannot apply) raises here."""
        request = _Request(loaded or self._current, prompt_ids, params)
        self._queue.put(request)
        return text_stream.request_events(request.events)

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, loaded: LoadedModel | None = None
    ) -> Completion:
        for item in self.stream(prompt_ids, params, loaded):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("decode ended without a completion")

    def generate_many(
        self, prompts: list[list[int]], params: SamplingParams, loaded: LoadedModel | None = None
    ) -> list[Completion]:
        """Decode many prompts in batches (used by the gates); results keep the input order."""
        target = loaded or self._current
        requests = [_Request(target, ids, params) for ids in prompts]
        for request in requests:
            self._queue.put(request)
        results = []
        for request in requests:
            while True:
                kind, value = request.events.get()
                if kind == "done":
                    results.append(value)
                    break
                if kind == "error":
                    raise value
        return results

    def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the decode thread, so it never competes with decoding for the model."""
        job = _Job(fn)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # --- decode thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                with torch.inference_mode():
                    self._decode(batch)
            except BaseException as exc:  # a failed batch fails its requests, not the thread
                log.exception("decode failed")
                for request in batch:
                    if request.finish_reason is None:
                        request.events.put(("error", exc))

    def _next_batch(self) -> list[_Request] | None:
        """The requests to decode next (all for one loaded version), [] when only jobs ran, None on close."""
        if not self._pending:
            item = self._queue.get()
            if item is None:
                return None
            self._accept(item)
        self._drain()
        return self._take(self._pending[0].loaded, self.max_batch_size) if self._pending else []

    def _accept(self, item: _Request | _Job) -> None:
        if isinstance(item, _Job):
            self._run_job(item)
        else:
            self._pending.append(item)

    def _drain(self) -> None:
        """Move what is already waiting into ``_pending``; jobs run here, between decode steps."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:  # closing: leave the marker for _next_batch, after the pending requests
                self._queue.put(None)
                return
            self._accept(item)

    def _take(self, target: LoadedModel, n: int) -> list[_Request]:
        chosen = [r for r in self._pending if r.loaded is target][:n]
        self._pending = [r for r in self._pending if all(r is not c for c in chosen)]
        return chosen

    @staticmethod
    def _run_job(job: _Job) -> None:
        try:
            job.result = job.fn()
        except BaseException as exc:
            job.error = exc
        finally:
            job.done.set()

    def _decode(self, batch: list[_Request]) -> None:
        """Decode ``batch`` to the end, letting requests for the same version join between steps
        (continuous batching): a chat that arrives while others are answering starts at once instead
        of waiting for the whole batch. ``batch`` grows in place, so a failure reaches the joiners too."""
        loaded = batch[0].loaded
        state = DecodeState.prefill(loaded, batch)
        active = list(range(len(batch)))  # indices into batch, in the cache's row order
        while active:
            next_tokens = [self._sample(batch[i], state.logits[k]) for k, i in enumerate(active)]
            still = [k for k, i in enumerate(active) if text_stream.advance(batch[i], next_tokens[k])]
            if len(still) < len(active):
                state.keep(still)
                next_tokens, active = [next_tokens[k] for k in still], [active[k] for k in still]
            if active:
                state.step(loaded, next_tokens)
            self._drain()
            joiners = self._take(loaded, self.max_batch_size - len(active))
            if joiners:
                first = len(batch)
                batch.extend(joiners)
                joined = DecodeState.prefill(loaded, joiners)
                state = state.merged(joined) if active else joined
                active += range(first, first + len(joiners))

    @staticmethod
    def _sample(request: _Request, raw: torch.Tensor) -> int:
        token = TransformersDecoder._choose(request, raw)
        if request.params.logprobs is not None:
            logprobs.record(request, raw.float().cpu().numpy(), token)
        if request.grammar is not None:
            request.grammar.accept(token)
        return token

    @staticmethod
    def _choose(request: _Request, logits: torch.Tensor) -> int:
        params = request.params
        if params.adjusts_logits:
            logits = TransformersDecoder._adjusted(request, logits)
        if request.grammar is not None:
            allowed = request.grammar.mask(logits.float().cpu().numpy())
            logits = torch.from_numpy(allowed).to(logits.device)
        if params.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = sorted_probs.cumsum(-1)
            sorted_probs[(cumulative - sorted_probs) > params.top_p] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=request.generator))

    @staticmethod
    def _adjusted(request: _Request, logits: torch.Tensor) -> torch.Tensor:
        """Penalties on the tokens generated so far and the caller's logit bias, as OpenAI applies them."""
        params = request.params
        logits = logits.float().clone()
        if request.generated and (params.frequency_penalty or params.presence_penalty):
            ids, counts = torch.tensor(request.generated, device=logits.device).unique(return_counts=True)
            logits[ids] -= params.frequency_penalty * counts.to(logits.dtype) + params.presence_penalty
        for token, bias in params.logit_bias.items():
            if 0 <= token < logits.shape[-1]:
                logits[token] += bias
        return logits


def perplexity(loaded: LoadedModel, texts: list[str], max_length: int = 512) -> float:
    """Token-level perplexity of ``texts`` (the gates' general-ability check). Run it through
    ``TransformersDecoder.run_exclusive`` when the loaded model is also serving."""
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = loaded.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            ids = ids.to(loaded.device)
            if ids.shape[1] < 2:
                continue
            out = loaded.model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total_nll += float(out.loss.float()) * n
            total_tokens += n
    return float(torch.exp(torch.tensor(total_nll / max(total_tokens, 1))))


def answer_logprobs(loaded: LoadedModel, pairs: list[tuple[list[int], list[int]]],
                    rows_per_pass: int = 8) -> list[tuple[float, int]]:
    """For each (prompt ids, answer ids), the summed log-probability of the answer tokens after the
    prompt: right-padded forward passes of ``rows_per_pass`` pairs (answer scoring for correction
    memory), the softmax taken only where an answer token is predicted (a full vocabulary at every
    position of a large batch would cost gigabytes). Run it through ``TransformersDecoder.run_exclusive`` when
    the loaded model is also serving."""
    results = []
    for start in range(0, len(pairs), rows_per_pass):
        chunk = pairs[start:start + rows_per_pass]
        rows = [prompt + answer for prompt, answer in chunk]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), loaded.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        with torch.inference_mode():
            logits = loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device)).logits
            for i, (prompt, answer) in enumerate(chunk):
                predicting = logits[i, len(prompt) - 1:len(prompt) + len(answer) - 1].float()
                targets = torch.tensor(answer, device=predicting.device)
                logprobs = torch.log_softmax(predicting, dim=-1).gather(1, targets[:, None])
                results.append((float(logprobs.sum()), len(answer)))
    return results
