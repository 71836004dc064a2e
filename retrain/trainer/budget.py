"""How many tokens a training micro-batch may hold, and whether activations are recomputed to hold more.

On a GPU a LoRA step on a small model is launch-bound: on an H200, SmolLM2-135M took 349 ms a step at
batch 4 and 382 ms at batch 120 (30x the tokens; ../shared/gpu/README.md), so the fastest round is the one
with the fewest steps that memory allows. On a CPU a step costs its tokens, so bigger batches buy nothing
but fewer updates: there the trainer keeps counting ``batch_size`` examples a batch (budget 0).

The budget comes from the card's free memory and an estimate of the activation memory a trained token
needs, from the model's own dimensions (layers, hidden and MLP widths, vocabulary). The factor comes
from SmolLM2-1.7B's dimensions on an H200 (bf16 autocast, fp32 weights, no checkpointing): 120 examples
(24,480 padded tokens) peaked at 90 GB, ~3.3 MB a token against 2.2 MB counted below. On SmolLM2-135M
the estimate is on the safe side: 1.1 MB a token estimated; a 8192-token budget peaked at 8.7 GiB
all told (2026-12-04, docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ACTIVATION_FACTOR = 1.6  # measured bytes of activations / the count below (see the module docstring)
MEMORY_SHARE = 0.6  # of the free memory after loading: the rest for the allocator's slack, optimizer and KL
MIN_BUDGET = 512


@dataclass(frozen=True)
class BatchBudget:
    tokens: int  # padded tokens per micro-batch; 0: batch_size examples a batch
    checkpointing: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"batch_tokens": self.tokens, "gradient_checkpointing": self.checkpointing, "reason": self.reason}


def bytes_per_token(model_config: Any, *, checkpointing: bool, answer_share: float = 0.3) -> float:
    """Activation memory one trained token needs: bf16 activations of every layer (attention and MLP
    inputs and outputs) or, with checkpointing, each layer's input plus one layer recomputed; plus the
    float32 logits, log-softmax and gradient at the answer positions (``answer_share`` of the tokens)."""
    layers = int(getattr(model_config, "num_hidden_layers", 12))
    hidden = int(getattr(model_config, "hidden_size", 768))
    inner = int(getattr(model_config, "intermediate_size", 4 * hidden) or 4 * hidden)
    vocab = int(getattr(model_config, "vocab_size", 32000))
    per_layer = (6 * hidden + 4 * inner) * 2
    body = (layers * hidden * 2 * 2 + per_layer) if checkpointing else layers * per_layer
    return ACTIVATION_FACTOR * body + answer_share * vocab * 4 * 3


def choose_budget(config: Any, model: Any, device: torch.device) -> BatchBudget:
    """The token budget and checkpointing of a run (``TrainConfig.batch_tokens`` / ``gradient_checkpointing``)."""
    wants_ckpt = config.gradient_checkpointing == "on"
    if config.batch_tokens >= 0:
        return BatchBudget(config.batch_tokens, wants_ckpt, "set")
    if device.type != "cuda":
        return BatchBudget(0, wants_ckpt, f"{device.type}: batch_size examples a batch")
    free, _total = torch.cuda.mem_get_info(device)
    usable = free * MEMORY_SHARE
    model_config = getattr(model, "config", None)
    plain = int(usable / bytes_per_token(model_config, checkpointing=False))
    cap = config.max_batch_tokens
    if config.gradient_checkpointing == "off" or (config.gradient_checkpointing == "auto" and plain >= cap):
        return BatchBudget(max(MIN_BUDGET, min(plain, cap)), False, f"{free / 2**30:.0f} GiB free")
    recomputed = int(usable / bytes_per_token(model_config, checkpointing=True))
    if config.gradient_checkpointing == "on" or recomputed >= 2 * plain:
        return BatchBudget(max(MIN_BUDGET, min(recomputed, cap)), True,
                           f"{free / 2**30:.0f} GiB free: {plain} tokens fit, {recomputed} with checkpointing")
    return BatchBudget(max(MIN_BUDGET, min(plain, cap)), False, f"{free / 2**30:.0f} GiB free")
