"""Turning examples into token ids and padded batches for the trainer.

An example is a ``feedback.examples.TrainingExample``: prompt messages (system, context, user) and
the answer. The prompt is tokenized with ``engine.prompting`` exactly as serving lays it out, so the
model learns on the layout it is later asked in.

A legacy example (an uploaded ``{"prompt", "completion"}`` line) is trained as written, without a chat
template: the completion's tokens follow the prompt's, then end-of-sequence, exactly as
``/v1/completions`` later feeds the prompt (separator included) and decodes what follows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from engine.prompting import PromptTooLongError, completion_text, trim_to_budget
from feedback.examples import TrainingExample


@dataclass
class EncodedExample:
    input_ids: list[int]
    weights: list[float]  # loss weight of each token as a *target* (prompt_loss_weight or 1)
    completion_mask: list[bool]  # True where the token belongs to the answer


def encode_example(tokenizer: Any, example: TrainingExample, *, max_seq_len: int,
                   prompt_loss_weight: float) -> EncodedExample | None:
    """Prompt ids + completion ids (the answer and the template's end-of-turn marker).

    Long prompts lose their oldest context turns first (as serving trims them); an example whose
    answer alone does not fit is dropped (None)."""
    if example.is_legacy:
        return encode_prompt_completion(tokenizer, example.prompt or "", example.completion, max_seq_len=max_seq_len,
                                        prompt_loss_weight=prompt_loss_weight)
    messages, answer = example.messages, example.completion
    completion = tokenizer(completion_text(tokenizer, messages, answer), add_special_tokens=False)["input_ids"]
    budget = max_seq_len - len(completion)
    if budget < 1:
        return None
    try:
        _kept, prompt = trim_to_budget(tokenizer, messages, budget)
    except PromptTooLongError:
        return None
    return EncodedExample(
        input_ids=prompt + completion,
        weights=[prompt_loss_weight] * len(prompt) + [1.0] * len(completion),
        completion_mask=[False] * len(prompt) + [True] * len(completion),
    )


def encode_prompt_completion(tokenizer: Any, prompt_text: str, answer_text: str, *, max_seq_len: int,
                             prompt_loss_weight: float) -> EncodedExample | None:
    """Prompt ids (raw text, no template) + completion ids + eos; a long prompt keeps its end (the part
    next to the separator); an example whose completion alone does not fit is dropped (None)."""
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    budget = max_seq_len - len(completion)
    if budget < 1 or not prompt:
        return None
    prompt = prompt[-budget:]
    return EncodedExample(
        input_ids=prompt + completion,
        weights=[prompt_loss_weight] * len(prompt) + [1.0] * len(completion),
        completion_mask=[False] * len(prompt) + [True] * len(completion),
    )


def length_grouped_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int,
                           bucket_batches: int = 8) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding stays small.

    Shuffle all indices (seeded by seed and epoch), cut them into buckets of ``bucket_batches``
    batches, sort each bucket by length, cut it into batches, then shuffle the batch order. The result
    is deterministic for a given seed and epoch and still mixes examples across epochs."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def token_budget_batches(lengths: list[int], budget: int, *, seed: int, epoch: int,
                         bucket_budgets: int = 8) -> list[list[int]]:
    """Indices grouped by length into batches of at most ``budget`` padded tokens (rows × the longest
    row; a single example longer than the budget gets a batch of its own).

    As ``length_grouped_batches``: shuffle (seeded by seed and epoch), cut into buckets of about
    ``bucket_budgets`` budgets' worth of tokens, sort each bucket by length and fill batches from it,
    then shuffle the batch order. Deterministic for a given seed and epoch."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    bucket: list[int] = []
    tokens = 0
    for index in order + [None]:
        if index is not None:
            bucket.append(index)
            tokens += lengths[index]
        if bucket and (index is None or tokens >= budget * bucket_budgets):
            batches += _fill(sorted(bucket, key=lambda i: lengths[i]), lengths, budget)
            bucket, tokens = [], 0
    rng.shuffle(batches)
    return batches


def _fill(ordered: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of ``ordered`` (sorted by length) whose rows × longest fits ``budget``."""
    batches: list[list[int]] = []
    for i in ordered:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def collate(encoded: list[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of this batch only."""
    width = max(len(e.input_ids) for e in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    completion = torch.zeros((n, width), dtype=torch.bool)
    for row, e in enumerate(encoded):
        k = len(e.input_ids)
        input_ids[row, :k] = torch.tensor(e.input_ids)
        attention[row, :k] = 1
        weights[row, :k] = torch.tensor(e.weights)
        completion[row, :k] = torch.tensor(e.completion_mask)
    return {"input_ids": input_ids, "attention_mask": attention, "weights": weights, "completion_mask": completion}


def collate_with_anchors(batch: dict[str, torch.Tensor], anchors: list[EncodedExample],
                         pad_id: int) -> dict[str, torch.Tensor]:
    """``batch`` with the ``anchors``' rows below its own, both padded to the wider of the two."""
    extra = collate(anchors, pad_id)
    width = max(batch["input_ids"].shape[1], extra["input_ids"].shape[1])
    fill = {"input_ids": pad_id, "attention_mask": 0, "weights": 0.0, "completion_mask": False}

    def widened(t: torch.Tensor, value) -> torch.Tensor:
        out = torch.full((t.shape[0], width), value, dtype=t.dtype)
        out[:, :t.shape[1]] = t
        return out

    return {k: torch.cat([widened(batch[k], fill[k]), widened(extra[k], fill[k])]) for k in batch}


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; to CUDA through pinned memory, without waiting for the copy."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def target_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  select: torch.Tensor) -> torch.Tensor:
    """Float logits predicting token t+1 at every position t where ``select[:, t]`` (shape: batch ×
    width-1) is True, rows in row-major order. ``select`` may also be those positions' flat indices
    (into batch × width-1, ascending): a long tensor, which a GPU indexes without a host round trip.

    The output projection of a small model is a large share of its compute (SmolLM2-135M: 28M of
    135M parameters, and a 49k-way softmax per position). Training only scores answer tokens, so the
    projection runs on those positions alone; models without a separable decoder get full logits."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    if decoder is None or head is None or getattr(causal_lm.config, "final_logit_softcapping", None):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return _pick(logits[:, :-1], select).float()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return head(_pick(hidden[:, :-1], select)).float()


def _pick(values: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    if select.dtype == torch.bool:
        return values[select]
    return values.reshape(-1, values.shape[-1]).index_select(0, select)
