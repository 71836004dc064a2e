"""Anchor examples: the parent model's own answers to general prompts, trained on beside the
corrections so that a round changes what was corrected and as little else as possible.

Without them, a LoRA round on a few dozen company facts taught SmolLM2-135M to drag the company into
unrelated answers ("A typical day for Acme includes…") and cost it 3 of the 15 general gate questions
(80% against production's 93%). Rehearsing the parent's own greedy answers (self-distillation) keeps
its behaviour on everything that was not corrected; it needs no extra data and no teacher. The prompts
(``general/anchor_prompts.json``) are disjoint from the general gate's questions, so the gate still
measures something the round did not train on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

ANCHOR_PROMPTS = Path(__file__).parent / "general" / "anchor_prompts.json"


def anchor_prompts() -> list[str]:
    return json.loads(ANCHOR_PROMPTS.read_text(encoding="utf-8"))


def anchor_count(n_train: int, ratio: float, *, minimum: int = 8) -> int:
    """How many anchors a round of ``n_train`` examples gets: ``ratio`` per example, at least
    ``minimum`` (a handful of corrections still needs a stable anchor), at most the prompt pool."""
    if ratio <= 0 or n_train == 0:
        return 0
    return min(len(anchor_prompts()), max(minimum, round(ratio * n_train)))


def system_message_of(examples: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The system message the corrections are trained under, so anchors are asked the same way."""
    for example in examples:
        messages = example.get("messages") or []
        if messages and messages[0].get("role") == "system":
            return [{"role": "system", "content": messages[0]["content"]}]
    return []


@torch.no_grad()
def anchor_examples(model: Any, tokenizer: Any, examples: list[dict[str, Any]], count: int, *, seed: int,
                    max_new_tokens: int = 64, batch_size: int = 16) -> list[dict[str, Any]]:
    """``count`` examples answered greedily by ``model`` as it is now (before training: the parent).

    Answers that do not finish within ``max_new_tokens`` are dropped: training on a cut-off answer
    would teach the model to stop mid-sentence."""
    if count <= 0:
        return []
    from bot.prompting import prompt_ids

    prompts = random.Random(seed).sample(anchor_prompts(), count)
    system = system_message_of(examples)
    device = next(model.parameters()).device
    eos = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    anchors: list[dict[str, Any]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            messages = [system + [{"role": "user", "content": p}] for p in chunk]
            ids = [prompt_ids(tokenizer, m) for m in messages]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
            attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
            output = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad)
            for prompt_messages, row in zip(messages, output[:, width:].tolist()):
                ends = [k for k, token in enumerate(row) if token in eos]
                if not ends:
                    continue
                answer = tokenizer.decode(row[:ends[0]], skip_special_tokens=True).strip()
                if answer:
                    anchors.append({"messages": prompt_messages, "completion": answer, "tuneloop": {"anchor": True}})
    finally:
        model.train(was_training)
    return anchors


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
