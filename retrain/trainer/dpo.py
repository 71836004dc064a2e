"""Direct preference optimisation (``method: {"type": "dpo"}``) on OpenAI's preference format.

Each line of the file is ``{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
"content": …}], "non_preferred_output": [{"role": "assistant", "content": …}]}``. A disliked answer and
its approved correction are exactly such a pair.

The loss is DPO's (Rafailov et al. 2023): ``-log σ(β · ((log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) −
log π_ref(y⁻))))`` over the answer tokens. The reference model is the parent version: the model as
loaded before the first step (its adapter, or a fresh LoRA whose zero-initialised B makes it exactly
the base), so its log-probabilities are computed once up front and no second model is kept in memory.
The run writes the same files as ``retrain.trainer.train`` (adapter, training_config.json, result.csv,
where ``train_accuracy`` is the share of pairs whose preferred answer the model now ranks higher).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.chat_tokenizer import padding_id
from feedback.examples import PREFERENCE_ROLES, TrainingExample
from retrain.trainer.batching import EncodedExample, collate, encode_example, length_grouped_batches
from retrain.trainer.config import TrainConfig
from retrain.trainer.interface import RunHooks, RunPaths
from retrain.trainer.pausing import PausePoint
from retrain.trainer.interface import TrainingCancelled
from retrain.trainer.supervised_run import device_of
from retrain.trainer.train import TrainResult, fit_and_save, result_of, start_training



def preference_problems(rows: list[Any]) -> list[str]:
    """What is wrong with a preference file, at most ten problems, each naming its line."""
    problems: list[str] = []
    for number, row in enumerate(rows, 1):
        messages = (row.get("input") or {}).get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages or any(
                not isinstance(m, dict) or m.get("role") not in PREFERENCE_ROLES or not isinstance(m.get("content"), str)
                for m in messages):
            problems.append(f"line {number}: needs input.messages, a list of {{role, content}}")
        elif messages[-1]["role"] != "user":
            problems.append(f"line {number}: input.messages must end with the user's message")
        for key in ("preferred_output", "non_preferred_output"):
            if not isinstance(row, dict) or not _answer(row, key):
                problems.append(f"line {number}: {key} must be [{{\"role\": \"assistant\", \"content\": \"...\"}}]")
        if len(problems) >= 10:
            break
    if not rows:
        problems.append("the file has no examples")
    return problems[:10]


def _answer(row: dict, key: str) -> str | None:
    output = row.get(key)
    if isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict) \
            and output[0].get("role") == "assistant" and isinstance(output[0].get("content"), str) \
            and output[0]["content"].strip():
        return output[0]["content"]
    return None


def as_chat_pair(row: dict) -> tuple[TrainingExample, TrainingExample]:
    """(preferred, non-preferred) as chat examples the supervised encoder understands."""
    prompt = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
              for m in row["input"]["messages"]]
    return (TrainingExample(prompt, _answer(row, "preferred_output")),
            TrainingExample(prompt, _answer(row, "non_preferred_output")))


def sequence_logprobs(model: Any, pairs: list[EncodedExample], pad_id: int, device: torch.device) -> torch.Tensor:
    """Sum of log-probabilities of each example's answer tokens (one value per example)."""
    batch = {k: v.to(device) for k, v in collate(pairs, pad_id).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def train_dpo(config: TrainConfig, beta: float, rows: list[dict], *, paths: RunPaths,
              hooks: RunHooks | None = None) -> TrainResult:
    """Train a LoRA adapter on preference ``rows`` and write it (atomically) to ``paths.output_dir``;
    ``hooks`` report, cancel, pause and resume as ``train``'s do."""
    started = time.perf_counter()
    hooks = hooks or RunHooks()
    model, tokenizer, device = start_training(config, paths)
    pad_id = padding_id(tokenizer)
    pairs = []
    for row in rows:
        good, bad = (encode_example(tokenizer, e, max_seq_len=config.max_seq_len, prompt_loss_weight=0.0)
                     for e in as_chat_pair(row))
        if good is not None and bad is not None:
            pairs.append((good, bad))
    if not pairs:
        raise ValueError("no preference pair fits max_seq_len; nothing to train on")
    model.eval()
    with torch.no_grad():  # the reference: the parent, as loaded
        reference = [(float(sequence_logprobs(model, [g], pad_id, device)), float(sequence_logprobs(model, [b], pad_id, device)))
                     for g, b in pairs]
    pause = PausePoint(hooks.resume_dir, hooks.should_pause)
    pause.load_weights(model)  # after the reference log-probabilities: they are the parent's
    run = _DpoRun(config, beta, model, _Pairs(pairs, reference, pad_id), hooks, pause)
    metrics = fit_and_save(run, model, paths.output_dir, lambda staging, metrics: _write_files(
        staging, config, beta, {**(hooks.provenance or {}), "metrics": metrics}, run.rows, paths))
    return result_of(run, paths, metrics, started)


@dataclass
class _Pairs:
    """The encoded (preferred, non-preferred) pairs and the parent's log-probabilities of each."""

    pairs: list[tuple[EncodedExample, EncodedExample]]
    reference: list[tuple[float, float]]
    pad_id: int


class _DpoRun:
    def __init__(self, config: TrainConfig, beta: float, model: Any, data: _Pairs, hooks: RunHooks,
                 pause: PausePoint | None = None):
        self.config, self.beta, self.model, self.pad_id = config, beta, model, data.pad_id
        self.device = device_of(model)
        self.pairs, self.reference = data.pairs, data.reference
        self.hooks = hooks
        self.pause = pause or PausePoint(None, None)
        self.step, self.trained_tokens, self.rows = 0, 0, []
        self.n_epochs, per_epoch = config.run_length(len(self.pairs), accumulate=False)
        self.total_steps = per_epoch * self.n_epochs

    def fit(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer = torch.optim.AdamW(params, lr=self.config.dpo_learning_rate,
                                                       weight_decay=self.config.weight_decay)
        self.scheduler = scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.config.warmup_fraction * self.total_steps), self.total_steps)
        first_epoch, position = self.pause.restore(self)
        lengths = [len(g.input_ids) + len(b.input_ids) for g, b in self.pairs]
        self.model.train()
        for epoch in range(first_epoch, self.n_epochs):
            batches = length_grouped_batches(lengths, self.config.batch_size, seed=self.config.seed, epoch=epoch)
            for index in range(position if epoch == first_epoch else 0, len(batches)):
                self.pause.check(self, epoch, index)
                batch = batches[index]
                if self.hooks.cancelled():
                    raise TrainingCancelled()
                loss, accuracy = self._loss([self.pairs[i] for i in batch], [self.reference[i] for i in batch])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.trained_tokens += sum(len(self.pairs[i][0].input_ids) + len(self.pairs[i][1].input_ids)
                                           for i in batch)
                row = {"step": self.step, "train_loss": float(loss.detach()), "train_accuracy": accuracy,
                       "valid_loss": None, "valid_mean_token_accuracy": None}
                self.rows.append(row)
                self.hooks.report({**row, "epoch": epoch + 1, "total_steps": self.total_steps,
                               "trained_tokens": self.trained_tokens})

    def _loss(self, pairs, reference) -> tuple[torch.Tensor, float]:
        good = sequence_logprobs(self.model, [g for g, _ in pairs], self.pad_id, self.device)
        bad = sequence_logprobs(self.model, [b for _, b in pairs], self.pad_id, self.device)
        ref = torch.tensor(reference, device=self.device)
        margin = (good - ref[:, 0]) - (bad - ref[:, 1])
        loss = -torch.nn.functional.logsigmoid(self.beta * margin).mean()
        return loss, float((margin > 0).float().mean())

    def resumable_state(self) -> dict[str, Any]:
        return {"trained_tokens": self.trained_tokens, "rows": self.rows}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.trained_tokens, self.rows = state["trained_tokens"], state["rows"]

    def final_metrics(self) -> dict[str, float]:
        last = self.rows[-1]
        return {"train_loss": last["train_loss"], "train_mean_token_accuracy": last["train_accuracy"],
                "steps": self.step, "trained_tokens": self.trained_tokens, "n_train": len(self.pairs), "n_valid": 0,
                "n_epochs": self.n_epochs, "method": "dpo", "beta": self.beta}


def _write_files(directory: Path, config: TrainConfig, beta: float, provenance: dict[str, Any],
                 rows: list[dict[str, Any]], paths: RunPaths) -> None:
    """training_config.json (``provenance`` ends with the run's metrics) and result.csv."""
    record = {"method": "dpo", "beta": beta, "config": asdict(config), "learning_rate": config.dpo_learning_rate,
              "base_model": str(paths.base_dir),
              "parent_adapter": str(paths.parent_adapter_dir) if paths.parent_adapter_dir else None,
              "reference": "the parent version (the model as loaded before the first step)", **provenance}
    (directory / "training_config.json").write_text(json.dumps(record, indent=2, default=str))
    columns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    with open(directory / "result.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
