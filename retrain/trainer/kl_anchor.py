"""Keeping a round from changing what it was not asked to change: a KL penalty to the parent.

A LoRA round on a few dozen company facts taught SmolLM2-135M to drag the company into unrelated
answers and cost it general questions ("5 days in a week"). Training on the parent's own answers as
hard targets (self-distillation "anchors") made that worse: it is more training, not less drift. What
works is the penalty RLHF uses: on general prompts, the candidate's next-token distribution must stay
close to the parent's: KL(parent ‖ candidate) at every answer position, over the parent's top-k
tokens and one bucket for the rest of the vocabulary.

The parent's distribution is computed once, before the first step, with the model as loaded (the
parent adapter on, or the bare base model for a first round), and kept sparse (top ``TOP_K`` tokens,
which hold nearly all of a small model's probability mass). The prompts
(``general/anchor_prompts.json``) are disjoint from the general gate's questions, so the gate still
measures something the round did not see.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.chat_tokenizer import end_of_reply_ids
from engine.prompting import prompt_ids
from feedback.examples import TrainingExample
from retrain.trainer.batching import EncodedExample, collate, target_logits, to_device

ANCHOR_PROMPTS = Path(__file__).parent.parent / "gates" / "general" / "anchor_prompts.json"
TOP_K = 32
ANCHOR_MAX_NEW_TOKENS = 48  # tokens of each anchor's answer (cut-off answers are kept)
ANCHOR_BATCH_SIZE = 16  # prompts answered together


@dataclass
class AnchorExample:
    encoded: EncodedExample
    ref_indices: torch.Tensor  # (answer positions, TOP_K) token ids
    ref_logprobs: torch.Tensor  # (answer positions, TOP_K) parent log-probabilities


def anchor_prompts() -> list[str]:
    return json.loads(ANCHOR_PROMPTS.read_text(encoding="utf-8"))


def system_message_of(examples: list[TrainingExample]) -> list[dict[str, str]]:
    """The system message the corrections are trained under, so anchors are asked the same way."""
    for example in examples:
        if example.messages and example.messages[0].get("role") == "system":
            return [{"role": "system", "content": example.messages[0]["content"]}]
    return []


@torch.no_grad()
def build_anchors(model: Any, tokenizer: Any, examples: list[TrainingExample], config: Any,
                  pad_id: int) -> list[AnchorExample]:
    """``config.kl_anchors`` general prompts (drawn with ``config.seed``) answered greedily by ``model``
    as loaded, with its top-k distribution at every answer token (the generated ids themselves, up to
    and including the end of turn, so no re-tokenization shifts them). Answers cut off at
    ``ANCHOR_MAX_NEW_TOKENS`` are kept: the penalty is about the distribution at each position, not
    about a finished answer; anchors longer than ``config.max_seq_len`` are dropped."""
    max_new_tokens, batch_size, max_seq_len = ANCHOR_MAX_NEW_TOKENS, ANCHOR_BATCH_SIZE, config.max_seq_len
    prompts = anchor_prompts()
    prompts = random.Random(config.seed).sample(prompts, min(config.kl_anchors, len(prompts)))
    system = system_message_of(examples)
    device = next(model.parameters()).device
    eos = end_of_reply_ids(model.generation_config.eos_token_id, tokenizer) | {pad_id}
    was_training = model.training
    model.eval()
    anchors: list[AnchorExample] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [system + [{"role": "user", "content": p}] for p in prompts[start:start + batch_size]]
            ids = [prompt_ids(tokenizer, m) for m in chunk]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([[pad_id] * (width - len(i)) + i for i in ids], device=device)
            attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
            output = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad_id)
            encoded = []
            for prompt, row in zip(ids, output[:, width:].tolist()):
                answer = row[:next((k + 1 for k, t in enumerate(row) if t in eos), len(row))]
                if len(prompt) + len(answer) <= max_seq_len:
                    encoded.append(EncodedExample(input_ids=prompt + answer, weights=[0.0] * (len(prompt) + len(answer)),
                                                  completion_mask=[False] * len(prompt) + [True] * len(answer)))
            if encoded:
                anchors += _with_reference(model, encoded, pad_id, device)
    finally:
        model.train(was_training)
    return anchors


def _with_reference(model: Any, encoded: list[EncodedExample], pad_id: int, device: torch.device) -> list[AnchorExample]:
    batch = collate(encoded, pad_id)
    mask = batch["completion_mask"][:, 1:]
    logits = target_logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), mask.to(device))
    top = torch.log_softmax(logits, dim=-1).topk(TOP_K, dim=-1)
    counts = mask.sum(1).tolist()
    indices, values = top.indices.cpu().split(counts), top.values.cpu().split(counts)
    return [AnchorExample(e, i, v) for e, i, v in zip(encoded, indices, values)]


def kl_to_parent(model: Any, anchors: list[AnchorExample], pad_id: int, device: torch.device) -> torch.Tensor:
    """Mean over answer positions of KL(parent ‖ model) on the parent's top-k tokens plus one bucket
    for the rest of the vocabulary: an exact KL of that coarser distribution, so it is never negative
    and it also counts probability moving away from everything the parent considered."""
    batch = collate([a.encoded for a in anchors], pad_id)
    mask = batch["completion_mask"][:, 1:].to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = target_logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), mask)
    return kl_from_logits(logits, anchors, device)


def kl_from_logits(logits: torch.Tensor, anchors: list[AnchorExample], device: torch.device) -> torch.Tensor:
    """``kl_to_parent`` from the model's logits at the anchors' answer positions (rows in the anchors'
    order), so a trainer can score the anchors in the same forward pass as its training batch."""
    current = torch.log_softmax(logits, dim=-1)  # rows in the same order as the anchors' positions
    ref_idx = to_device(torch.cat([a.ref_indices for a in anchors]), device)
    ref_lp = to_device(torch.cat([a.ref_logprobs for a in anchors]), device)
    model_lp = current.gather(-1, ref_idx)
    ref_rest = _log_rest(ref_lp)
    model_rest = _log_rest(model_lp)
    top = (ref_lp.exp() * (ref_lp - model_lp)).sum(-1)
    return (top + ref_rest.exp() * (ref_rest - model_rest)).mean()


def _log_rest(logprobs: torch.Tensor) -> torch.Tensor:
    """log of the probability outside the given tokens."""
    return torch.log1p(-logprobs.exp().sum(-1).clamp(max=1 - 1e-6))
