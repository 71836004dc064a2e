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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from retrain.augment import held_out_by_correction, training_set
from retrain.batching import EncodedExample, collate, encode_example, length_grouped_batches, target_logits
from retrain.replay import example_key

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "training_config.json", "result.csv")


class TrainingCancelled(Exception):
    """``should_cancel()`` returned True; nothing was written."""


@dataclass
class TrainConfig:
    """Hyperparameters of one run. Defaults were tuned on the bundled SmolLM2-135M-Instruct on 2 CPU
    cores (see ``docs``/the report): LoRA r=16 on every linear projection at 1e-3 learns five new
    facts in 8 epochs (~1 min) and forty in a few minutes, where 2e-4 (the usual 7B default) still
    answered with the base model's guess after the same number of steps."""

    n_epochs: int = field(default=10, metadata={"help": "Passes over the training examples. Small fact "
                          "sets need several passes: 3 did not learn 5 facts; with the KL penalty on, 8 learned 19 "
                          "of 20 facts and 10 all 20."})
    min_steps: int = field(default=12, metadata={"help": "Fewest optimizer steps of a run: with few "
                           "examples, n_epochs is raised until the run takes this many (like OpenAI's automatic "
                           "epochs). Three corrections at 8 epochs gave 8 steps and one was not learned; 12 learned all three, "
                           "24 overfit them and cost 11 of 15 general questions."})
    batch_size: int = field(default=4, metadata={"help": "Examples per micro-batch (padded to the "
                            "longest in the batch). Small batches give more updates per epoch on small data."})
    learning_rate_multiplier: float = field(default=1.0, metadata={"help": "Scales base_learning_rate "
                                            "(OpenAI's hyperparameter of the same name)."})
    base_learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate before the "
                                      "multiplier. 1e-3 suits LoRA on a 135M model; 2e-4 was too slow to learn facts."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of a fresh adapter (a continued adapter "
                        "keeps its parent's shape)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1). 0: "
                                "with few examples, dropout slowed learning more than it helped."})
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR), metadata={
        "help": "Modules that get LoRA weights; default every linear projection of attention and MLP."})
    prompt_loss_weight: float = field(default=0.0, metadata={"help": "Loss weight of prompt tokens "
                                      "(answer tokens weigh 1). 0 trains on the answers only."})
    replay_fraction: float = field(default=1.0, metadata={"help": "Share of examples the parent already "
                                   "saw that are replayed with the new ones (against forgetting), in [0, 1]."})
    kl_weight: float = field(default=1.0, metadata={"help": "Weight of the KL penalty that keeps the model's "
                             "answers to general prompts close to the parent's (retrain.kl_anchor); 0 turns it off. "
                             "On 20 facts, 1.0 kept 13 of 14 general questions (off: 9) and the general perplexity "
                             "+11% (off: +43%); 2.0 with half the anchors per step learned only 16 of 20."})
    kl_anchors: int = field(default=32, metadata={"help": "General prompts the KL penalty is computed on "
                            "(answered by the parent once, before the first step)."})
    kl_batch_size: int = field(default=4, metadata={"help": "Anchor prompts per optimizer step for the KL penalty."})
    seed: int = field(default=42, metadata={"help": "Seeds LoRA init, shuffling, dropout and replay sampling."})
    gradient_accumulation: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_seq_len: int = field(default=1024, metadata={"help": "Longest example in tokens; older context "
                             "turns are trimmed first, examples whose answer does not fit are skipped."})
    warmup_fraction: float = field(default=0.1, metadata={"help": "Share of steps with linear LR warmup; "
                                   "then linear decay to 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the LoRA weights."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate on the validation split every N steps "
                            "(0: only at the end of each epoch)."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present, bf16 autocast), cpu (fp32) or cuda."})
    train_on_phrasings: bool = field(default=True, metadata={"help": "Train each correction on its accepted "
                                     "alternative phrasings too (one example each, same answer); with two or more, one "
                                     "is held out for the generalises gate (retrain.augment)."})
    memory_examples_fraction: float = field(default=0.5, metadata={"help": "Share of the examples trained once "
                                            "more with memory context (their verified answer among other approved "
                                            "answers, laid out as serving does), so the model learns to use memory; 0: off."})
    memory_distractors: int = field(default=2, metadata={"help": "Most other approved answers shown beside the "
                                    "right one in a memory-context example (each example draws 0 to this many)."})
    stop_when_learned: bool = field(default=True, metadata={"help": "Stop once every new example's answer tokens "
                                    "are all predicted right (teacher-forced argmax of the training pass itself) at "
                                    "learned_checks consecutive end-of-epoch checks; n_epochs is then the cap."})
    learned_checks: int = field(default=2, metadata={"help": "Consecutive all-right checks before stopping."})

    def __post_init__(self) -> None:
        checks = [
            (self.n_epochs >= 1, "n_epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.min_steps >= 0, "min_steps must be 0 or more"),
            (self.learning_rate_multiplier > 0, "learning_rate_multiplier must be greater than 0"),
            (self.base_learning_rate > 0, "base_learning_rate must be greater than 0"),
            (self.lora_r >= 1, "lora_r (the LoRA rank) must be at least 1"),
            (self.lora_alpha > 0, "lora_alpha must be greater than 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (bool(self.target_modules), "target_modules must name at least one module"),
            (self.prompt_loss_weight >= 0, "prompt_loss_weight must be 0 or more"),
            (0.0 <= self.replay_fraction <= 1.0, "replay_fraction must be in [0, 1]"),
            (self.kl_weight >= 0, "kl_weight must be 0 or more"),
            (self.kl_anchors >= 1, "kl_anchors must be at least 1"),
            (self.kl_batch_size >= 1, "kl_batch_size must be at least 1"),
            (self.gradient_accumulation >= 1, "gradient_accumulation must be at least 1"),
            (self.max_seq_len >= 16, "max_seq_len must be at least 16"),
            (0.0 <= self.warmup_fraction < 1.0, "warmup_fraction must be in [0, 1)"),
            (self.eval_every >= 0, "eval_every must be 0 or more"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (0.0 <= self.memory_examples_fraction <= 1.0, "memory_examples_fraction must be in [0, 1]"),
            (self.memory_distractors >= 0, "memory_distractors must be 0 or more"),
            (self.learned_checks >= 1, "learned_checks must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.learning_rate_multiplier

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a job's hyperparameters; unknown keys are an error, None means default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if v is not None})


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    trained_tokens: int
    metrics: dict[str, float]
    seconds: float
    continued_from: str | None


ProgressCallback = Callable[[dict[str, Any]], None]


def train(config: TrainConfig, examples_train: list[dict], examples_valid: list[dict], *, base_dir: Path,
          parent_adapter_dir: Path | None, output_dir: Path, progress_callback: ProgressCallback | None = None,
          should_cancel: Callable[[], bool] | None = None, provenance: dict[str, Any] | None = None,
          epoch_callback: Callable[[Any, int, int], None] | None = None,
          new_keys: set[str] | None = None) -> TrainResult:
    """Train a LoRA adapter on ``examples_train`` and write it (atomically) to ``output_dir``.

    The examples are first expanded with their accepted phrasings and memory-context copies
    (``retrain.augment``). ``new_keys`` (``retrain.replay.example_key`` of the examples new this
    round; None: all) are the ones ``stop_when_learned`` waits for: replayed examples were learned before.
    ``epoch_callback(model, epoch, step)`` runs after each epoch (the worker saves checkpoints there)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    model, tokenizer, device = start_training(config, base_dir, parent_adapter_dir, output_dir)
    expanded = training_set(examples_train, phrasings=config.train_on_phrasings,
                            memory_fraction=config.memory_examples_fraction,
                            max_distractors=config.memory_distractors, seed=config.seed)
    encoded = _encode_all(tokenizer, expanded, config)
    train_set = [enc for enc, _ in encoded]
    is_new = [new_keys is None or example_key(e) in new_keys for _, e in encoded]
    valid_set = [enc for enc, _ in _encode_all(tokenizer, examples_valid, config)]
    if not train_set:
        raise ValueError("no training example fits max_seq_len; nothing to train on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    anchors = []
    if config.kl_weight > 0:
        from retrain.kl_anchor import build_anchors

        anchors = build_anchors(model, tokenizer, examples_train, count=config.kl_anchors, seed=config.seed,
                                max_seq_len=config.max_seq_len, pad_id=pad_id)
    run = _Run(config, model, device, pad_id, train_set, valid_set, progress_callback, should_cancel, anchors, is_new)
    run.epoch_callback = epoch_callback
    provenance = {**(provenance or {}), "held_out_phrasings": held_out_by_correction(examples_train),
                  "expanded_examples": {"phrasing": sum(e["tuneloop"]["phrasing"] > 0 for _, e in encoded),
                                        "memory_context": sum(e["tuneloop"]["memory_context"] for _, e in encoded),
                                        "total": len(encoded)}}
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        run.fit()
        staging.mkdir(parents=True)
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's boilerplate model card
        metrics = run.final_metrics()
        _write_provenance(staging, config, provenance, metrics, run, base_dir, parent_adapter_dir)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(base, lora)
    return model.to(device), tokenizer


def _encode_all(tokenizer: Any, examples: list[dict], config: TrainConfig) -> list[tuple[EncodedExample, dict]]:
    """(encoded, source example) of every example that fits max_seq_len."""
    encoded = ((encode_example(tokenizer, e, max_seq_len=config.max_seq_len,
                               prompt_loss_weight=config.prompt_loss_weight), e) for e in examples)
    return [(enc, e) for enc, e in encoded if enc is not None]


class _Run:
    """The optimisation loop and its bookkeeping (one instance per ``train`` call)."""

    def __init__(self, config, model, device, pad_id, train_set, valid_set, progress_callback, should_cancel,
                 anchors=(), is_new=None):
        self.config, self.model, self.device, self.pad_id = config, model, device, pad_id
        # Train until learned: per example, were all its answer tokens right in its latest forward pass?
        self.is_new = list(is_new) if is_new is not None else [True] * len(train_set)
        self.right = [False] * len(train_set)
        self.all_right_checks = 0
        self.learned_at_step: int | None = None
        self.anchors = list(anchors)
        self.train_set, self.valid_set = train_set, valid_set
        self.progress = progress_callback or (lambda _event: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.step = 0
        self.trained_tokens = 0
        self.rows: list[dict[str, Any]] = []
        self.last_valid: dict[str, float] = {}
        per_epoch = math.ceil(math.ceil(len(train_set) / config.batch_size) / config.gradient_accumulation)
        self.n_epochs = max(config.n_epochs, math.ceil(config.min_steps / per_epoch))
        self.total_steps = per_epoch * self.n_epochs

    def fit(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_fraction * self.total_steps), self.total_steps)
        lengths = [len(e.input_ids) for e in self.train_set]
        for epoch in range(self.n_epochs):
            self.model.train()
            batches = length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=epoch)
            for start in range(0, len(batches), config.gradient_accumulation):
                group = batches[start:start + config.gradient_accumulation]
                loss, accuracy = self._accumulate(group)
                kl = self._kl_penalty()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                end_of_epoch = start + config.gradient_accumulation >= len(batches)
                evaluate = end_of_epoch or (config.eval_every and self.step % config.eval_every == 0)
                self._record(epoch, loss, accuracy, self.evaluate() if evaluate else None, kl,
                             self._check_learned() if end_of_epoch else None)
            if getattr(self, "epoch_callback", None):
                self.epoch_callback(self.model, epoch + 1, self.step)
            if self.learned_at_step is not None and config.stop_when_learned:
                return

    def _check_learned(self) -> float:
        """End of an epoch, where every example had one forward pass: the share of new examples whose
        answer tokens were all the argmax. Sets ``learned_at_step`` after ``learned_checks`` in a row at 100%."""
        new = [right for right, is_new in zip(self.right, self.is_new) if is_new]
        share = sum(new) / len(new) if new else 1.0
        self.all_right_checks = self.all_right_checks + 1 if share == 1.0 else 0
        if self.all_right_checks >= self.config.learned_checks and self.learned_at_step is None:
            self.learned_at_step = self.step
        return share

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
                self.right[i] = right
            (weighted / total_weight).backward()
            loss_sum += float(weighted.detach())
            correct, counted = correct + c, counted + n
            self.trained_tokens += int(batch["attention_mask"].sum())
        return loss_sum / total_weight, correct / max(counted, 1)

    def _kl_penalty(self) -> float | None:
        """Backpropagate kl_weight × KL(parent ‖ model) on the next anchor batch (cycling through them)."""
        if not self.anchors:
            return None
        from retrain.kl_anchor import kl_to_parent

        n = len(self.anchors)
        size = min(self.config.kl_batch_size, n)
        chosen = [self.anchors[(self.step * size + k) % n] for k in range(size)]
        kl = kl_to_parent(self.model, chosen, self.pad_id, self.device)
        (self.config.kl_weight * kl).backward()
        return float(kl.detach())

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int, list[bool]]:
        """(sum of weighted token losses, correct answer tokens, answer tokens, per row: every answer
        token right) of one padded batch."""
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
        correct = int((hit & scored).sum())
        rows = select.nonzero()[:, 0]  # the batch row of each selected position
        wrong_per_row = torch.zeros(select.shape[0], dtype=torch.long, device=hit.device)
        wrong_per_row.index_add_(0, rows, (~hit & scored).long())
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
                   "n_train": len(self.train_set), "n_valid": len(self.valid_set), "n_epochs": self.n_epochs,
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
