"""The train-until-learned bookkeeping, kept on the training device.

Per example, how many of its latest training passes in a row had every answer token right (the argmax,
with probability at least ``learned_min_prob``). Each example gets one pass an epoch, so this counts
consecutive epochs. The counters live in a tensor on the device the model trains on, so a step never
waits for the GPU to say whether a row was right: the trainer reads the learned share back only every
few steps (``retrain.trainer.train.SYNC_EVERY``).
"""

from __future__ import annotations

import torch

from retrain.trainer.batching import to_device


class LearnedCheck:
    def __init__(self, is_new: list[bool], checks: int, device: torch.device):
        self.checks = checks
        self.device = device
        self.streak = torch.zeros(len(is_new), dtype=torch.long, device=device)
        self.new = torch.tensor(is_new, dtype=torch.bool, device=device)
        self.any_new = any(is_new)

    def update(self, indices: list[int], rows_right: torch.Tensor) -> None:
        """After a pass over ``indices``: a right row extends its streak, a wrong one resets it."""
        idx = to_device(torch.tensor(indices, dtype=torch.long), self.device)
        self.streak[idx] = (self.streak[idx] + 1) * rows_right.to(torch.long)

    def share(self) -> torch.Tensor:
        """Share of the new examples learned (a 0-d tensor on the device; 1 when none is new)."""
        if not self.any_new:
            return torch.ones((), device=self.device)
        return (self.streak[self.new] >= self.checks).float().mean()

    def state(self) -> list[int]:
        return self.streak.tolist()

    def restore(self, streak: list[int]) -> None:
        self.streak = torch.tensor(streak, dtype=torch.long, device=self.device)
