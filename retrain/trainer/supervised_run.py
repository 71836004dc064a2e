"""The supervised optimisation loop of ``retrain.trainer.train.train``: ``SupervisedRun``.

Batches are planned before the first step (so the step count is known and a resumed run sees the same
batches); each step accumulates its micro-batches, adds the KL penalty to the parent on its anchors
when due (``retrain.trainer.kl_anchor``), and updates the train-until-learned counters on the device
(``retrain.trainer.learned``). On a CPU the figures are read back after every step; on CUDA every
``SYNC_EVERY`` steps, so a step never waits for the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from retrain.trainer.batching import (EncodedExample, collate, collate_with_anchors, length_grouped_batches,
                                     target_logits, to_device, token_budget_batches)
from retrain.trainer.budget import BatchBudget
from retrain.trainer.config import TrainConfig
from retrain.trainer.interface import RunHooks, TrainingCancelled
from retrain.trainer.kl_anchor import AnchorExample, kl_from_logits, kl_to_parent
from retrain.trainer.learned import LearnedCheck
from retrain.trainer.pausing import PausePoint

SYNC_EVERY = 8  # on CUDA: steps between reading the loss and the learned check back to the host


def device_of(model: Any) -> torch.device:
    """Where ``model`` computes: its parameters' device (a CPU for one without parameters, e.g. when only
    the run's batch plan is wanted)."""
    return next((p.device for p in model.parameters()), torch.device("cpu")) if model is not None \
        else torch.device("cpu")


@dataclass
class RunData:
    """What one supervised run trains and validates on, encoded: ``is_new`` per training example (the
    ones the stop rule waits for), ``anchors`` for the KL penalty (none without it)."""

    train_set: list[EncodedExample]
    valid_set: list[EncodedExample]
    pad_id: int
    is_new: list[bool] | None = None
    anchors: list[AnchorExample] = field(default_factory=list)


class SupervisedRun:
    """The optimisation loop and its bookkeeping (one instance per ``train`` call): batches planned up
    front, the KL anchors when due, the stop rule on the device, progress, pause and cancel."""

    def __init__(self, config: TrainConfig, model: Any, data: RunData, hooks: RunHooks | None = None,
                 pause: PausePoint | None = None, budget: BatchBudget | None = None):
        self.config, self.model, self.pad_id = config, model, data.pad_id
        self.device = device_of(model)
        self.hooks = hooks or RunHooks()
        self.pause = pause or PausePoint(None, None)
        self.budget = budget or BatchBudget(0, False, "count batches")
        # Train until learned: per example, how many of its latest forward passes in a row had every answer
        # token right (each example gets one pass an epoch, so this is per-example consecutive checks)
        self.learned = LearnedCheck(list(data.is_new) if data.is_new is not None else [True] * len(data.train_set),
                                    config.learned_checks, self.device)
        self.learned_at_step: int | None = None
        self.anchors = list(data.anchors)
        self.train_set, self.valid_set = data.train_set, data.valid_set
        self.step = 0
        self.epochs_run = 0
        self.trained_tokens = 0
        self.rows: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []  # steps run but not yet read back from the device
        self.last_valid: dict[str, float] = {}
        self.sync_every = SYNC_EVERY if self.device.type == "cuda" else 1
        self.plan = self._plan()
        self.n_epochs = len(self.plan)
        self.total_steps = sum(self._steps_in(batches) for batches in self.plan)

    def _plan(self) -> list[list[list[int]]]:
        """The batches of every epoch, fixed before the first step (so the step count is known and a
        resumed run sees the same batches): ``n_epochs``, raised until the run takes ``min_steps``."""
        lengths = [len(e.input_ids) for e in self.train_set]
        config, tokens = self.config, self.budget.tokens

        def epoch(e: int) -> list[list[int]]:
            if tokens:
                return token_budget_batches(lengths, tokens, seed=config.seed, epoch=e)
            return length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=e)

        plan: list[list[list[int]]] = []
        while len(plan) < config.n_epochs or sum(self._steps_in(b) for b in plan) < config.min_steps:
            plan.append(epoch(len(plan)))
        return plan

    def _steps_in(self, batches: list[list[int]]) -> int:
        return math.ceil(len(batches) / self.config.gradient_accumulation)

    def fit(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                                       fused=self.device.type == "cuda" or None)
        self.scheduler = scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_fraction * self.total_steps), self.total_steps)
        first_epoch, position = self.pause.restore(self)
        for epoch in range(first_epoch, self.n_epochs):
            self.model.train()
            batches = self.plan[epoch]
            for start in range(position if epoch == first_epoch else 0, len(batches), config.gradient_accumulation):
                if self.learned_at_step is not None and config.stop_when_learned:
                    self.epochs_run = epoch + 1  # learned in steps read back at a pause: nothing left to do
                    return
                self.pause.check(self, epoch, start)
                loss, accuracy, kl = self._accumulate(batches[start:start + config.gradient_accumulation])
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                end_of_epoch = start + config.gradient_accumulation >= len(batches)
                self.pending.append({"epoch": epoch, "step": self.step, "loss": loss, "accuracy": accuracy, "kl": kl,
                                     "share": self.learned.share(), "end_of_epoch": end_of_epoch,
                                     "trained_tokens": self.trained_tokens})
                evaluate = bool(config.eval_every and self.step % config.eval_every == 0)
                if end_of_epoch or evaluate or self.step % self.sync_every == 0:
                    if self._flush(evaluate_last=end_of_epoch or evaluate):
                        self.epochs_run = epoch + 1
                        return
            self.epochs_run = epoch + 1
            if self.hooks.on_epoch is not None:
                self.hooks.on_epoch(self.model, epoch + 1, self.step)

    def _flush(self, *, evaluate_last: bool = False) -> bool:
        """Read the pending steps' figures back from the device (one transfer), record them, and say
        whether the run has learned and should stop. On a CPU this runs after every step; on CUDA every
        ``SYNC_EVERY`` steps, so a run may take a few steps past the one where it learned."""
        if not self.pending:
            return False
        pending, self.pending = self.pending, []
        keys = ("loss", "accuracy", "kl", "share")
        values = torch.stack([torch.as_tensor(p[k] if p[k] is not None else 0.0, dtype=torch.float32,
                                              device=self.device) for p in pending for k in keys]).tolist()
        stop = False
        for n, entry in enumerate(pending):
            loss, accuracy, kl, share = values[len(keys) * n:len(keys) * (n + 1)]
            just_learned = share >= 1.0 and self.learned_at_step is None
            if just_learned:
                self.learned_at_step = entry["step"]
            stop = stop or (just_learned and self.config.stop_when_learned)
            last = n == len(pending) - 1
            valid = self.evaluate() if last and (evaluate_last or stop) else None
            self._record(entry, loss, accuracy, valid, kl if entry["kl"] is not None else None,
                         share if entry["end_of_epoch"] or just_learned else None)
        return stop

    def resumable_state(self) -> dict[str, Any]:
        """What a pause keeps besides weights, optimizer and position (``retrain.trainer.pausing``)."""
        self._flush()
        return {"trained_tokens": self.trained_tokens, "rows": self.rows, "streak": self.learned.state(),
                "learned_at_step": self.learned_at_step, "last_valid": self.last_valid,
                "batch_budget": self.budget.as_dict()}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.learned.restore(state.pop("streak"))
        state.pop("batch_budget", None)  # read before the run was built (``saved_budget``)
        for name, value in state.items():
            setattr(self, name, value)

    def _accumulate(self, group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward/backward over the micro-batches of one step (the KL anchors, when due, in the last
        one's forward pass on CUDA); loss is weighted per token across them. Returns device tensors."""
        batches = [collate([self.train_set[i] for i in idx], self.pad_id) for idx in group]
        total_weight = sum(float(b["weights"][:, 1:].sum()) for b in batches) or 1.0
        anchors = self._due_anchors()
        loss_sum = correct = torch.zeros((), device=self.device)
        counted, kl = 0, None
        for n, (idx, batch) in enumerate(zip(group, batches)):
            if self.hooks.cancelled():
                raise TrainingCancelled()
            merge = anchors if (n == len(group) - 1 and self.device.type == "cuda") else None
            weighted, c, count, rows_right, kl_merged = self._score(batch, merge)
            self.learned.update(idx, rows_right)
            loss = weighted / total_weight
            if kl_merged is not None:
                kl, loss = kl_merged, loss + self.config.kl_weight * kl_merged
            loss.backward()
            loss_sum, correct, counted = loss_sum + weighted.detach(), correct + c, counted + count
            self.trained_tokens += int(batch["attention_mask"].sum())
        if anchors and kl is None:
            kl = kl_to_parent(self.model, anchors, self.pad_id, self.device)
            (self.config.kl_weight * kl).backward()
        return loss_sum / total_weight, correct / max(counted, 1), kl.detach() if kl is not None else None

    def _due_anchors(self) -> list[AnchorExample]:
        """The anchors of this step's KL penalty (none between ``kl_every`` steps), cycling through them."""
        if not self.anchors or self.step % self.config.kl_every:
            return []
        n = len(self.anchors)
        size = min(self.config.kl_batch_size, n)
        turn = self.step // self.config.kl_every
        return [self.anchors[(turn * size + k) % n] for k in range(size)]

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int, list[bool]]:
        """(sum of weighted token losses, correct answer tokens, answer tokens, per row: every answer
        token right with probability at least ``learned_min_prob``) of one padded batch, read back to the
        host (evaluation; the training steps keep ``_score``'s tensors on the device)."""
        weighted, correct, counted, rows_right, _kl = self._score(batch, None)
        return weighted, int(correct), counted, rows_right.tolist()

    def _score(self, batch: dict[str, torch.Tensor], anchors: list[AnchorExample] | None):
        """``_forward``'s figures and the KL to the parent on ``anchors`` (None without), the anchors
        scored in the same forward pass as the batch (one launch sequence instead of two on a GPU)."""
        rows = batch["input_ids"].shape[0]
        if anchors:
            batch = collate_with_anchors(batch, [a.encoded for a in anchors], self.pad_id)
        # Which positions are scored, worked out on the host from the padded batch: indexing by a boolean
        # mask on the GPU would wait for the device to learn the result's size, every forward pass
        select = (batch["weights"][:, 1:] > 0) | batch["completion_mask"][:, 1:]
        flat = select.flatten().nonzero().squeeze(1)
        n_selected = int(select[:rows].sum())
        mine = flat[:n_selected]
        host = {"row_of": mine // select.shape[1], "weights": batch["weights"][:, 1:].flatten()[mine],
                "scored": batch["completion_mask"][:, 1:].flatten()[mine],
                "targets": batch["input_ids"][:, 1:].flatten()[mine], "flat": flat,
                "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        counted = int(host["scored"].sum())
        on = {k: to_device(v, self.device) for k, v in host.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = target_logits(self.model, on["input_ids"], on["attention_mask"], on["flat"])
        kl = kl_from_logits(logits[n_selected:], anchors, self.device) if anchors else None
        logits, targets, scored = logits[:n_selected], on["targets"], on["scored"]
        token_loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        weighted = (token_loss * on["weights"]).sum()
        hit = logits.argmax(-1) == targets
        # an answer token counts as right when it is the argmax by a margin: p(target) >= learned_min_prob
        sure = hit & (token_loss.detach() <= -math.log(self.config.learned_min_prob))
        correct = (hit & scored).sum()
        wrong_per_row = torch.zeros(rows, dtype=torch.long, device=hit.device)
        wrong_per_row.index_add_(0, on["row_of"], (~sure & scored).long())
        return weighted, correct, counted, wrong_per_row == 0, kl

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Loss and token accuracy on the answers of the validation split (prompt weight ignored)."""
        if not self.valid_set:
            return None
        self.model.eval()
        loss_sum, correct, counted = 0.0, 0, 0
        for start in range(0, len(self.valid_set), self.config.batch_size):
            batch = collate(self.valid_set[start:start + self.config.batch_size], self.pad_id)
            batch["weights"] = batch["completion_mask"].float()
            weighted, c, n, _rows = self._forward(batch)
            loss_sum, correct, counted = loss_sum + float(weighted), correct + c, counted + n
        self.model.train()
        self.last_valid = {"valid_loss": loss_sum / max(counted, 1), "valid_mean_token_accuracy": correct / max(counted, 1)}
        return self.last_valid

    def _record(self, entry: dict[str, Any], loss: float, accuracy: float, valid: dict[str, float] | None,
                kl: float | None = None, learned: float | None = None) -> None:
        row = {"step": entry["step"], "train_loss": loss, "train_accuracy": accuracy, "kl_to_parent": kl,
               "valid_loss": None, "valid_mean_token_accuracy": None, **(valid or {})}
        if learned is not None:
            row["learned_share"] = learned
            row["learned_at_step"] = self.learned_at_step
        self.rows.append(row)
        self.hooks.report({**row, "epoch": entry["epoch"] + 1, "total_steps": self.total_steps,
                       "trained_tokens": entry["trained_tokens"]})

    def final_metrics(self) -> dict[str, float]:
        self._flush()
        last = self.rows[-1]
        metrics = {"train_loss": last["train_loss"], "train_mean_token_accuracy": last["train_accuracy"],
                   "steps": self.step, "trained_tokens": self.trained_tokens,
                   "n_train": len(self.train_set), "n_valid": len(self.valid_set), "n_epochs": self.epochs_run,
                   "max_steps": self.total_steps, "learned_at_step": self.learned_at_step,
                   "stopped_at_step": self.step, "batch_tokens": self.budget.tokens,
                   "gradient_checkpointing": self.budget.checkpointing,
                   "stop_reason": ("learned" if self.learned_at_step is not None and self.config.stop_when_learned
                                   else "cap")}
        return {**metrics, **self.last_valid}
