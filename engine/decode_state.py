"""The state of one running decode batch (``engine.transformers_model`` owns the thread that drives it).

Kept apart from the engine because it is the part that knows the KV cache's layout: rows are
left-padded to a common width, so rows of different ages can share one cache, join it (``merged``)
and leave it (``keep``) between decode steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from engine.transformers_model import LoadedModel, _Request


class DecodeState:
    """The rows of a running batch: KV cache, attention mask, each row's last position and next-token
    logits. Rows are left-padded to a common width; position ids are explicit, so padding never
    shifts a row's positions and rows of different ages can share the cache."""

    def __init__(self, cache: Any, attention: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor):
        self.cache, self.attention, self.positions, self.logits = cache, attention, positions, logits

    @classmethod
    def prefill(cls, loaded: LoadedModel, requests: list[_Request]) -> "DecodeState":
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), loaded.pad_id, dtype=torch.long)
        attention = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):
            n = len(request.prompt_ids)
            input_ids[row, width - n:] = torch.tensor(request.prompt_ids)
            attention[row, width - n:] = 1
        input_ids, attention = input_ids.to(loaded.device), attention.to(loaded.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # logits_to_keep=1: only the last position's logits are needed, not a 49k-way projection per prompt token.
        out = loaded.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                           logits_to_keep=1)
        return cls(out.past_key_values, attention, positions[:, -1], out.logits[:, -1, :])

    def step(self, loaded: LoadedModel, tokens: list[int]) -> None:
        """Feed one token per row."""
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(tokens), 1))], dim=1)
        self.positions = self.positions + 1
        step_ids = torch.tensor(tokens, device=loaded.device).unsqueeze(1)
        out = loaded.model(input_ids=step_ids, attention_mask=self.attention, position_ids=self.positions.unsqueeze(1),
                           past_key_values=self.cache, use_cache=True)
        self.cache, self.logits = out.past_key_values, out.logits[:, -1, :]

    def keep(self, rows: list[int]) -> None:
        """Drop finished rows, then the leading columns no remaining row attends to. ``rows`` may be
        empty (every row finished on the same step): the state is then an empty batch, not an error."""
        index = torch.tensor(rows, dtype=torch.long, device=self.attention.device)
        self.cache.batch_select_indices(index)
        self.attention, self.positions, self.logits = self.attention[index], self.positions[index], self.logits[index]
        unused = int((self.attention.sum(0) == 0).long().cumprod(0).sum())
        if unused and rows:
            self.attention = self.attention[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def merged(self, other: "DecodeState") -> "DecodeState":
        """This state's rows followed by ``other``'s, left-padded to the wider of the two."""
        width = max(self.attention.shape[1], other.attention.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
        return DecodeState(self.cache, torch.cat([pad(self.attention, 1), pad(other.attention, 1)]),
                            torch.cat([self.positions, other.positions]), torch.cat([self.logits, other.logits]))
