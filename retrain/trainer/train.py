"""One LoRA fine-tuning run: ``train(config, examples_train, examples_valid, ...)``.

The worker, the CLI and the tests all call ``train``. It continues from the parent version's adapter
when there is one (so each round refines production instead of starting over), trains on the answer
tokens only (by default), and writes the new adapter with its provenance into a staging directory
that is renamed into place at the very end: a crash or a cancel never leaves a half-written version.

Files written to ``output_dir``:
  adapter_model.safetensors, adapter_config.json  (peft)
  training_config.json  (config, provenance: parent, snapshot, base model; final metrics)
  result.csv            (one row per optimizer step, like OpenAI's result file)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.architectures import lora_targets
from feedback.examples import TrainingExample
from retrain.trainer.augment import held_out_by_correction, training_set
from retrain.trainer.batching import EncodedExample, collate, encode_example, length_grouped_batches, target_logits
from retrain.trainer.config import TrainConfig
from retrain.trainer.kl_anchor import build_anchors, kl_to_parent
from retrain.trainer.pausing import PausePoint

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "training_config.json", "result.csv")


class TrainingCancelled(Exception):
    """``should_cancel()`` returned True; nothing was written."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    trained_tokens: int
    metrics: dict[str, float]
    seconds: float
    continued_from: str | None


ProgressCallback = Callable[[dict[str, Any]], None]


def train(config: TrainConfig, examples_train: list[TrainingExample], examples_valid: list[TrainingExample], *,
          base_dir: Path,
          parent_adapter_dir: Path | None, output_dir: Path, progress_callback: ProgressCallback | None = None,
          should_cancel: Callable[[], bool] | None = None, provenance: dict[str, Any] | None = None,
          epoch_callback: Callable[[Any, int, int], None] | None = None,
          new_keys: set[str] | None = None, should_pause: Callable[[], bool] | None = None,
          resume_dir: Path | None = None) -> TrainResult:
    """Train a LoRA adapter on ``examples_train`` and write it (atomically) to ``output_dir``.

    The examples are first expanded with their accepted phrasings and memory-context copies
    (``retrain.trainer.augment``). ``new_keys`` (``TrainingExample.key`` of the examples new this
    round; None: all) are the ones ``stop_when_learned`` waits for: replayed examples were learned before.
    ``epoch_callback(model, epoch, step)`` runs after each epoch (the worker saves checkpoints there).
    ``should_pause()`` is asked at each step boundary; when it says yes a resumable checkpoint is written
    to ``resume_dir`` and ``TrainingPaused`` raised; a later call with the same ``resume_dir`` continues
    from it (``retrain.trainer.pausing``)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    model, tokenizer, device = start_training(config, base_dir, parent_adapter_dir, output_dir)
    encoded = _encode_all(tokenizer, expand_for_training(config, examples_train), config)
    train_set = [enc for enc, _ in encoded]
    is_new = [new_keys is None or e.key in new_keys for _, e in encoded]
    valid_set = [enc for enc, _ in _encode_all(tokenizer, examples_valid, config)]
    if not train_set:
        raise ValueError("no training example fits max_seq_len; nothing to train on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    anchors = []
    if config.kl_weight > 0:
        anchors = build_anchors(model, tokenizer, examples_train, count=config.kl_anchors, seed=config.seed,
                                max_seq_len=config.max_seq_len, pad_id=pad_id)
    pause = PausePoint(resume_dir, should_pause)
    pause.load_weights(model)  # after the anchors: they are the parent's answers
    run = _Run(config, model, device, pad_id, train_set, valid_set, progress_callback, should_cancel, anchors, is_new,
               pause=pause)
    run.epoch_callback = epoch_callback
    provenance = {**(provenance or {}), "held_out_phrasings": held_out_by_correction(examples_train),
                  "expanded_examples": {"phrasing": sum(e.phrasing > 0 for _, e in encoded),
                                        "memory_context": sum(e.memory_context for _, e in encoded),
                                        "total": len(encoded)}}
    metrics = fit_and_save(run, model, output_dir, lambda staging, metrics: _write_provenance(
        staging, config, provenance, metrics, run, base_dir, parent_adapter_dir))
    return result_of(run, output_dir, metrics, started, parent_adapter_dir)


def expand_for_training(config: TrainConfig, examples: list[TrainingExample]) -> list[TrainingExample]:
    """The examples a run really trains on: the round's, plus their accepted phrasings and memory-context
    copies as ``config`` asks. The job plans its epochs and steps on these, not on the round's count."""
    return training_set(examples, phrasings=config.train_on_phrasings, memory_fraction=config.memory_examples_fraction,
                        max_distractors=config.memory_distractors, seed=config.seed)


def fit_and_save(run: Any, model: Any, output_dir: Path, write_files: Callable[[Path, dict[str, Any]], None]) -> dict:
    """Run the optimisation loop, then write the adapter and its files into a staging directory that is
    renamed into place at the very end: a crash or a cancel never leaves a half-written version.
    Shared by supervised and DPO runs; returns the run's final metrics."""
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        run.fit()
        staging.mkdir(parents=True)
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's boilerplate model card
        metrics = run.final_metrics()
        write_files(staging, metrics)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metrics


def result_of(run: Any, output_dir: Path, metrics: dict[str, Any], started: float,
              parent_adapter_dir: Path | None) -> TrainResult:
    return TrainResult(output_dir=output_dir, steps=run.step, trained_tokens=run.trained_tokens, metrics=metrics,
                       seconds=time.perf_counter() - started,
                       continued_from=str(parent_adapter_dir) if parent_adapter_dir else None)


def start_training(config: TrainConfig, base_dir: Path, parent_adapter_dir: Path | None,
                   output_dir: Path) -> tuple[Any, Any, torch.device]:
    """What every training run does first (supervised and DPO): refuse an existing output directory
    (adapters are never overwritten), seed, pick the device, load the base model with the LoRA to train."""
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists; adapters are never overwritten")
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model, tokenizer = _load_model(config, base_dir, parent_adapter_dir, device)
    return model, tokenizer, device


def _load_model(config: TrainConfig, base_dir: Path, parent_adapter_dir: Path | None, device: torch.device):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if parent_adapter_dir is not None:
        model = PeftModel.from_pretrained(base, parent_adapter_dir, is_trainable=True)
    else:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=lora_targets(base.config.model_type, config.target_modules),
                          task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(base, lora)
    return model.to(device), tokenizer


def _encode_all(tokenizer: Any, examples: list[TrainingExample],
                config: TrainConfig) -> list[tuple[EncodedExample, TrainingExample]]:
    """(encoded, source example) of every example that fits max_seq_len."""
    encoded = ((encode_example(tokenizer, e, max_seq_len=config.max_seq_len,
                               prompt_loss_weight=config.prompt_loss_weight), e) for e in examples)
    return [(enc, e) for enc, e in encoded if enc is not None]


class _Run:
    """The optimisation loop and its bookkeeping (one instance per ``train`` call)."""

    def __init__(self, config, model, device, pad_id, train_set, valid_set, progress_callback, should_cancel,
                 anchors=(), is_new=None, pause: PausePoint | None = None):
        self.config, self.model, self.device, self.pad_id = config, model, device, pad_id
        self.pause = pause or PausePoint(None, None)
        # Train until learned: per example, how many of its latest forward passes in a row had every answer
        # token right (each example gets one pass an epoch, so this is per-example consecutive checks)
        self.is_new = list(is_new) if is_new is not None else [True] * len(train_set)
        self.streak = [0] * len(train_set)
        self.learned_at_step: int | None = None
        self.anchors = list(anchors)
        self.train_set, self.valid_set = train_set, valid_set
        self.progress = progress_callback or (lambda _event: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.step = 0
        self.epochs_run = 0
        self.trained_tokens = 0
        self.rows: list[dict[str, Any]] = []
        self.last_valid: dict[str, float] = {}
        self.n_epochs, per_epoch = config.run_length(len(train_set))
        self.total_steps = per_epoch * self.n_epochs

    def fit(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                                       weight_decay=config.weight_decay)
        self.scheduler = scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_fraction * self.total_steps), self.total_steps)
        first_epoch, position = self.pause.restore(self)
        lengths = [len(e.input_ids) for e in self.train_set]
        for epoch in range(first_epoch, self.n_epochs):
            self.model.train()
            batches = length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=epoch)
            for start in range(position if epoch == first_epoch else 0, len(batches), config.gradient_accumulation):
                self.pause.check(self, epoch, start)
                group = batches[start:start + config.gradient_accumulation]
                loss, accuracy = self._accumulate(group)
                kl = self._kl_penalty()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                end_of_epoch = start + config.gradient_accumulation >= len(batches)
                learned_share, just_learned = self._check_learned()
                stop = just_learned and config.stop_when_learned
                evaluate = end_of_epoch or stop or (config.eval_every and self.step % config.eval_every == 0)
                self._record(epoch, loss, accuracy, self.evaluate() if evaluate else None, kl,
                             learned_share if end_of_epoch or just_learned else None)
                if stop:
                    self.epochs_run = epoch + 1
                    return
            self.epochs_run = epoch + 1
            if getattr(self, "epoch_callback", None):
                self.epoch_callback(self.model, epoch + 1, self.step)

    def resumable_state(self) -> dict[str, Any]:
        """What a pause keeps besides weights, optimizer and position (``retrain.trainer.pausing``)."""
        return {"trained_tokens": self.trained_tokens, "rows": self.rows, "streak": self.streak,
                "learned_at_step": self.learned_at_step,
                "last_valid": self.last_valid}

    def restore_state(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _check_learned(self) -> tuple[float, bool]:
        """After every step: (share of new examples learned, whether this step completed it). An example is
        learned when its latest ``learned_checks`` forward passes in a row had every answer token right.
        Checked at every step, not only at the end of an epoch: the run stops at the step where the last
        example's second right pass happens instead of finishing an epoch that only confirms it (round 1 of
        bench/loop.py stopped at step 262, where the epoch-end rule could not have stopped before 270)."""
        new = [streak >= self.config.learned_checks for streak, is_new in zip(self.streak, self.is_new) if is_new]
        share = sum(new) / len(new) if new else 1.0
        if share < 1.0 or self.learned_at_step is not None:
            return share, False
        self.learned_at_step = self.step
        return share, True

    def _accumulate(self, group: list[list[int]]) -> tuple[float, float]:
        """Forward/backward over the micro-batches of one step; loss is weighted per token across them."""
        batches = [collate([self.train_set[i] for i in idx], self.pad_id) for idx in group]
        total_weight = sum(float(b["weights"][:, 1:].sum()) for b in batches) or 1.0
        loss_sum, correct, counted = 0.0, 0, 0
        for idx, batch in zip(group, batches):
            if self.should_cancel():
                raise TrainingCancelled()
            weighted, c, n, rows_right = self._forward(batch)
            for i, right in zip(idx, rows_right):
                self.streak[i] = self.streak[i] + 1 if right else 0
            (weighted / total_weight).backward()
            loss_sum += float(weighted.detach())
            correct, counted = correct + c, counted + n
            self.trained_tokens += int(batch["attention_mask"].sum())
        return loss_sum / total_weight, correct / max(counted, 1)

    def _kl_penalty(self) -> float | None:
        """Backpropagate kl_weight × KL(parent ‖ model) on the next anchor batch (cycling through them)."""
        if not self.anchors:
            return None

        n = len(self.anchors)
        size = min(self.config.kl_batch_size, n)
        chosen = [self.anchors[(self.step * size + k) % n] for k in range(size)]
        kl = kl_to_parent(self.model, chosen, self.pad_id, self.device)
        (self.config.kl_weight * kl).backward()
        return float(kl.detach())

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int, list[bool]]:
        """(sum of weighted token losses, correct answer tokens, answer tokens, per row: every answer
        token right with probability at least ``learned_min_prob``) of one padded batch."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        weights, answer = batch["weights"][:, 1:], batch["completion_mask"][:, 1:]
        select = (weights > 0) | answer
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = target_logits(self.model, batch["input_ids"], batch["attention_mask"], select)
        targets = batch["input_ids"][:, 1:][select]
        token_loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        weighted = (token_loss * weights[select]).sum()
        scored = answer[select]
        hit = logits.argmax(-1) == targets
        # an answer token counts as right when it is the argmax by a margin: p(target) >= learned_min_prob
        sure = hit & (token_loss.detach() <= -math.log(self.config.learned_min_prob))
        correct = int((hit & scored).sum())
        rows = select.nonzero()[:, 0]  # the batch row of each selected position
        wrong_per_row = torch.zeros(select.shape[0], dtype=torch.long, device=hit.device)
        wrong_per_row.index_add_(0, rows, (~sure & scored).long())
        return weighted, correct, int(scored.sum()), (wrong_per_row == 0).tolist()

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

    def _record(self, epoch: int, loss: float, accuracy: float, valid: dict[str, float] | None,
                kl: float | None = None, learned: float | None = None) -> None:
        row = {"step": self.step, "train_loss": loss, "train_accuracy": accuracy, "kl_to_parent": kl,
               "valid_loss": None, "valid_mean_token_accuracy": None, **(valid or {})}
        if learned is not None:
            row["learned_share"] = learned
            row["learned_at_step"] = self.learned_at_step
        self.rows.append(row)
        self.progress({**row, "epoch": epoch + 1, "total_steps": self.total_steps,
                       "trained_tokens": self.trained_tokens})

    def final_metrics(self) -> dict[str, float]:
        last = self.rows[-1]
        metrics = {"train_loss": last["train_loss"], "train_mean_token_accuracy": last["train_accuracy"],
                   "steps": self.step, "trained_tokens": self.trained_tokens,
                   "n_train": len(self.train_set), "n_valid": len(self.valid_set), "n_epochs": self.epochs_run,
                   "max_steps": self.total_steps, "learned_at_step": self.learned_at_step,
                   "stopped_at_step": self.step,
                   "stop_reason": ("learned" if self.learned_at_step is not None and self.config.stop_when_learned
                                   else "cap")}
        return {**metrics, **self.last_valid}


def _write_provenance(directory: Path, config: TrainConfig, provenance: dict[str, Any] | None,
                      metrics: dict[str, float], run: _Run, base_dir: Path, parent_adapter_dir: Path | None) -> None:
    record = {"config": asdict(config), "learning_rate": config.learning_rate, "base_model": str(base_dir),
              "parent_adapter": str(parent_adapter_dir) if parent_adapter_dir else None,
              **(provenance or {}), "metrics": metrics}
    (directory / "training_config.json").write_text(json.dumps(record, indent=2, default=str))
    columns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy", "kl_to_parent"]
    with open(directory / "result.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in run.rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
