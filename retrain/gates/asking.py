"""How the gates ask: greedy answers from the engine production serves with (what is gated is what
serves: ``serving_backend=llamacpp`` asks llama.cpp on the version's GGUF), capped at 1.5× the
reference's length + 8 tokens and batched by that budget."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from engine.llamacpp import LlamaCppEngine
from engine.llamacpp_model import gpu_layers
from engine.prompting import trim_to_budget
from engine.protocol import SamplingParams
from engine.transformers_model import LoadedModel, TransformersDecoder
from retrain.gates.items import GateItem
from tuneloop.core.settings import Settings


def _answer_budget(tokenizer: Any, reference: str, settings: Settings) -> int:
    """Tokens to generate for one question: enough for an answer like the reference, rounded up to
    16 so questions share batches."""
    n = len(tokenizer(reference, add_special_tokens=False)["input_ids"])
    return min(settings.gate_max_tokens, 16 * math.ceil((1.5 * n + 8) / 16))


def answer_all(loaded: LoadedModel, items: list[GateItem], settings: Settings) -> list[str]:
    """Greedy answers of ``loaded`` to every item, from the engine production serves with (what is
    gated is what serves: ``serving_backend=llamacpp`` asks llama.cpp, on the version's GGUF)."""
    if settings.serving_backend == "llamacpp":
        return _answer_with_llamacpp(loaded, items, settings)
    engine = TransformersDecoder(loaded, max_batch_size=max(settings.max_batch_size, 16))
    answers = [""] * len(items)
    try:
        for max_tokens, indices in _budget_groups(loaded, items, settings):
            budget = min(settings.context_budget, loaded.max_context) - max_tokens
            prompts = {i: trim_to_budget(loaded.tokenizer, items[i].messages, budget)[1] for i in indices}
            order = sorted(indices, key=lambda i: len(prompts[i]))
            done = engine.generate_many([prompts[i] for i in order], _greedy(settings, max_tokens))
            for i, completion in zip(order, done):
                answers[i] = completion.text.strip()
    finally:
        engine.close()
    return answers


def engine_used(loaded: LoadedModel, settings: Settings) -> dict[str, Any]:
    """What ``answer_all`` decodes with, for the gate report: the engine and the device it runs on
    (transformers on the model's device and dtype; llama.cpp with its layers offloaded to the GPU or not)."""
    if settings.serving_backend == "llamacpp":
        layers = gpu_layers(settings.llamacpp_gpu_layers)
        return {"engine": "llamacpp", "device": "gpu" if layers else "cpu", "gpu_layers": layers}
    dtype = next(loaded.model.parameters()).dtype
    return {"engine": "transformers", "device": str(loaded.device), "dtype": str(dtype).removeprefix("torch.")}


def _answer_with_llamacpp(loaded: LoadedModel, items: list[GateItem], settings: Settings) -> list[str]:
    engine = LlamaCppEngine(settings.model_copy(update={"max_batch_size": max(settings.max_batch_size, 16)}),
                            lambda _version: loaded.spec)
    version = _Served(loaded.spec.id)
    answers = [""] * len(items)
    try:
        engine.swap(version)
        for max_tokens, indices in _budget_groups(loaded, items, settings):
            done = engine.generate_many(version, [items[i].messages for i in indices], _greedy(settings, max_tokens))
            for i, completion in zip(indices, done):
                answers[i] = completion.text.strip()
    finally:
        engine.close()
    return answers


@dataclass
class _Served:
    """A version as an engine needs it (``engine.protocol.ServedVersion``): the gates load files, not rows."""

    id: str
    name: str = ""
    adapter_path: str | None = None
    hosted_model: str | None = None


def _budget_groups(loaded: LoadedModel, items: list[GateItem], settings: Settings) -> list[tuple[int, list[int]]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[_answer_budget(loaded.tokenizer, item.reference, settings)].append(i)
    return sorted(groups.items())


def _greedy(settings: Settings, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, repetition_ngram=settings.repetition_guard_ngram)
