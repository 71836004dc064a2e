"""What the llama.cpp engine (``engine.llamacpp``) keeps per request, and how it picks a chat's next
token: a ``ChatRequest`` (one chat, one sequence of the shared KV cache) or a ``ScoreRequest`` (one
approved answer scored by prompt evaluation); greedy or temperature / top-p sampling over the logits,
after OpenAI's penalties and logit_bias and a grammar's mask. Nothing here imports torch."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np

from engine import logprobs
from engine.llamacpp_model import LlamaModel
from engine.protocol import AnswerScore, SamplingParams
from engine.structured import GrammarMask, GrammarVocab


class ChatRequest:
    """One chat. The attributes ``loaded``, ``params``, ``generated``, ``emitted``, ``events`` and
    ``finish_reason`` are what the transformers engine's text handling reads and writes."""

    def __init__(self, loaded: LlamaModel, prompt_ids: list[int], params: SamplingParams):
        self.loaded, self.prompt_ids, self.params = loaded, prompt_ids, params
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.generated: list[int] = []
        self.decode = lambda ids: loaded.tokenizer.decode(ids, skip_special_tokens=True)
        self.emitted = ""
        self.finish_reason: str | None = None
        self.seq: int | None = None
        self.fed = 0  # prompt tokens already in the cache
        self.cancelled = False
        self.rng = np.random.default_rng(params.seed) if params.temperature > 0 else None
        self.reserved = len(prompt_ids) + params.max_tokens
        self.grammar = GrammarMask(grammar_vocab_of(loaded), params.grammar, params.grammar_param) if params.grammar else None
        self.token_logprobs: list = []


class ScoreRequest:
    """One answer to score: its conversation's prompt and the answer are fed as one sequence, and the
    logits at every answer position are read instead of sampled (prompt evaluation only). It shares the
    decode steps, the sequences and the prompt cache with the chats."""

    def __init__(self, loaded: LlamaModel, prompt_ids: list[int], answer_ids: list[int],
                 lead: "ScoreRequest | None" = None):
        self.loaded, self.prompt_ids = loaded, prompt_ids + answer_ids
        # answers to one conversation share its prompt: the others start once the lead's prompt is in
        # the prompt cache, and feed only their answer
        self.lead = lead
        self.done = False
        self.score_from = len(prompt_ids) - 1  # the logits here predict the answer's first token
        self.cache_ids = self.prompt_ids[:self.score_from + 1]  # what the prompt cache may stand in for
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.seq: int | None = None
        self.fed = 0
        self.cancelled = False
        self.reserved = len(self.prompt_ids)
        self.logprob, self.tokens = 0.0, len(answer_ids)

    def waits_for_lead(self) -> bool:
        lead = self.lead
        return lead is not None and not lead.done and not lead.cancelled and lead.fed <= lead.score_from

    def result(self) -> AnswerScore:
        kind, value = self.events.get()
        if kind == "error":
            raise value
        return value


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    values = logits.astype(np.float64)
    top = values.max()
    return float(values[token] - top - np.log(np.exp(values - top).sum()))


def grammar_vocab_of(loaded: LlamaModel) -> GrammarVocab:
    """The model's vocabulary as constrained decoding reads it (``engine.structured``), made once."""
    if getattr(loaded, "grammar_vocab", None) is None:
        loaded.grammar_vocab = GrammarVocab(loaded.lc, loaded.lc.llama_model_get_vocab(loaded.model), loaded.eos_ids)
    return loaded.grammar_vocab


def sample_next(request: ChatRequest, raw: np.ndarray) -> int:
    token = choose_token(request, raw)
    logprobs.record(request, raw, token)
    if request.grammar is not None:
        request.grammar.accept(token)
    return token


def choose_token(request: ChatRequest, logits: np.ndarray) -> int:
    params = request.params
    logits = penalised(request, logits)
    if request.grammar is not None:
        logits = request.grammar.mask(logits)
    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = (logits.astype(np.float64) - logits.max()) / params.temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        cut = order[(cumulative - probs[order]) > params.top_p]
        probs[cut] = 0
        probs /= probs.sum()
    return int(request.rng.choice(len(probs), p=probs))


def penalised(request: ChatRequest, logits: np.ndarray) -> np.ndarray:
    """OpenAI's frequency/presence penalties and logit_bias, when the request carries them."""
    params = request.params
    frequency = getattr(params, "frequency_penalty", 0.0) or 0.0
    presence = getattr(params, "presence_penalty", 0.0) or 0.0
    bias = getattr(params, "logit_bias", None) or {}
    if not (frequency or presence or bias):
        return logits
    adjusted = logits.astype(np.float32, copy=True)
    if request.generated and (frequency or presence):
        tokens, counts = np.unique(np.asarray(request.generated), return_counts=True)
        adjusted[tokens] -= frequency * counts + presence
    for token, value in bias.items():
        adjusted[int(token)] += float(value)
    return adjusted
