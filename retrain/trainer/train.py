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
from retrain.trainer.batching import EncodedExample, encode_example
from retrain.trainer.budget import choose_budget
from retrain.trainer.config import TrainConfig
from retrain.trainer.interface import RunHooks, RunPaths
from retrain.trainer.kl_anchor import build_anchors
from retrain.trainer.pausing import PausePoint
from retrain.trainer.supervised_run import RunData, SupervisedRun

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "training_config.json", "result.csv")


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    trained_tokens: int
    metrics: dict[str, float]
    seconds: float
    continued_from: str | None


def train(config: TrainConfig, examples_train: list[TrainingExample], examples_valid: list[TrainingExample], *,
          paths: RunPaths, hooks: RunHooks | None = None, new_keys: set[str] | None = None) -> TrainResult:
    """Train a LoRA adapter on ``examples_train`` from ``paths.parent_adapter_dir`` (or a fresh LoRA on
    ``paths.base_dir``) and write it atomically to ``paths.output_dir``.

    The examples are first expanded with their accepted phrasings and memory-context copies
    (``retrain.trainer.augment``). ``new_keys`` (``TrainingExample.key`` of the examples new this
    round; None: all) are the ones ``stop_when_learned`` waits for: replayed examples were learned before.
    ``hooks`` report progress, cancel, pause and resume, save per-epoch checkpoints
    (``retrain.trainer.interface.RunHooks``)."""
    started = time.perf_counter()
    hooks = hooks or RunHooks()
    model, tokenizer, device = start_training(config, paths)
    encoded = _encode_all(tokenizer, expand_for_training(config, examples_train), config)
    if not encoded:
        raise ValueError("no training example fits max_seq_len; nothing to train on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = RunData([enc for enc, _ in encoded], [enc for enc, _ in _encode_all(tokenizer, examples_valid, config)],
                   pad_id, [new_keys is None or e.key in new_keys for _, e in encoded])
    if config.kl_weight > 0:
        data.anchors = build_anchors(model, tokenizer, examples_train, config, pad_id)
    pause = PausePoint(hooks.resume_dir, hooks.should_pause)
    pause.load_weights(model)  # after the anchors: they are the parent's answers
    budget = pause.saved_budget() or choose_budget(config, model, device)
    if budget.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    run = SupervisedRun(config, model, data, hooks, pause, budget)
    provenance = {**(hooks.provenance or {}), "held_out_phrasings": held_out_by_correction(examples_train),
                  "expanded_examples": {"phrasing": sum(e.phrasing > 0 for _, e in encoded),
                                        "memory_context": sum(e.memory_context for _, e in encoded),
                                        "total": len(encoded)}}
    metrics = fit_and_save(run, model, paths.output_dir, lambda staging, metrics: _write_provenance(
        staging, config, {**provenance, "metrics": metrics}, run, paths))
    return result_of(run, paths, metrics, started)


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


def result_of(run: Any, paths: RunPaths, metrics: dict[str, Any], started: float) -> TrainResult:
    return TrainResult(output_dir=paths.output_dir, steps=run.step, trained_tokens=run.trained_tokens,
                       metrics=metrics, seconds=time.perf_counter() - started,
                       continued_from=str(paths.parent_adapter_dir) if paths.parent_adapter_dir else None)


def start_training(config: TrainConfig, paths: RunPaths) -> tuple[Any, Any, torch.device]:
    """What every training run does first (supervised and DPO): refuse an existing output directory
    (adapters are never overwritten), seed, pick the device, load the base model with the LoRA to train."""
    if Path(paths.output_dir).exists():
        raise FileExistsError(f"{paths.output_dir} already exists; adapters are never overwritten")
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model, tokenizer = _load_model(config, paths.base_dir, paths.parent_adapter_dir, device)
    return model, tokenizer, device


def _load_model(config: TrainConfig, base_dir: Path, parent_adapter_dir: Path | None, device: torch.device):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if parent_adapter_dir is not None:
        model = PeftModel.from_pretrained(base, parent_adapter_dir, is_trainable=True)
    else:
        layers = base.config.num_hidden_layers
        top = list(range(max(0, layers - config.lora_layers), layers)) if config.lora_layers else None
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=lora_targets(base.config.model_type, config.target_modules),
                          layers_to_transform=top, task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(base, lora)
    return model.to(device), tokenizer


def _encode_all(tokenizer: Any, examples: list[TrainingExample],
                config: TrainConfig) -> list[tuple[EncodedExample, TrainingExample]]:
    """(encoded, source example) of every example that fits max_seq_len."""
    encoded = ((encode_example(tokenizer, e, max_seq_len=config.max_seq_len,
                               prompt_loss_weight=config.prompt_loss_weight), e) for e in examples)
    return [(enc, e) for enc, e in encoded if enc is not None]


def _write_provenance(directory: Path, config: TrainConfig, provenance: dict[str, Any], run: SupervisedRun,
                      paths: RunPaths) -> None:
    """training_config.json (``provenance`` ends with the run's metrics) and result.csv."""
    record = {"config": asdict(config), "learning_rate": config.learning_rate, "base_model": str(paths.base_dir),
              "parent_adapter": str(paths.parent_adapter_dir) if paths.parent_adapter_dir else None, **provenance}
    (directory / "training_config.json").write_text(json.dumps(record, indent=2, default=str))
    columns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy", "kl_to_parent"]
    with open(directory / "result.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in run.rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
