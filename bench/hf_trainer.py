"""The baseline of bench/train.py: Hugging Face ``Trainer`` + peft, as a notebook writes it, on the same
examples and the same LoRA as tuneloop's trainer (``LORA``), at its best settings for the device."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import fields
from pathlib import Path

LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, base_learning_rate=1e-3, warmup_fraction=0.1)
HF_BATCHES = (4, 16, 32, 64)  # the batch sizes scanned for HF's best on a GPU


def log(message: str) -> None:
    print(f"[bench/train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def hf_rows(base: Path, examples: list) -> tuple[list[dict], int]:
    from transformers import AutoTokenizer

    from retrain.trainer.batching import encode_example
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.train import expand_for_training

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = []
    for example in expand_for_training(TrainConfig(), examples):
        enc = encode_example(tokenizer, example, max_seq_len=1024, prompt_loss_weight=0.0)
        if enc is not None:
            rows.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
                         "labels": [t if m else -100 for t, m in zip(enc.input_ids, enc.completion_mask)]})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return rows, pad


def run_hf(base: Path, rows: list[dict], pad: int, work: Path, *, device: str, batch: int, epochs: int = 0,
           steps: int = 0) -> dict:
    """HF ``Trainer`` + peft as a notebook writes it, at its best for the device: length-grouped batches,
    bf16 on CUDA. ``epochs`` for a round, or ``steps`` for a step-time probe."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)

    from retrain.trainer.config import ALL_LINEAR

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token_id = pad
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.is_quantized = False  # a GGUF-converted model keeps the flag; its weights are fp32
    model = get_peft_model(model, LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=0.0,
                                             target_modules=ALL_LINEAR, task_type="CAUSAL_LM"))
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if steps and device == "cuda":
                torch.cuda.synchronize()  # as run_ours's probes
            stamps.append(time.perf_counter())

    per_epoch = -(-len(rows) // batch)
    total = steps or per_epoch * epochs
    on_cuda = device == "cuda"
    names = {f.name for f in fields(TrainingArguments)}
    grouped = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names
               else {"group_by_length": True})  # transformers < 5.2x
    args = TrainingArguments(**grouped, output_dir=str(work / "hf-checkpoints"), max_steps=total, per_device_train_batch_size=batch,
                             learning_rate=LORA["base_learning_rate"], lr_scheduler_type="linear", weight_decay=0.0,
                             warmup_steps=int(LORA["warmup_fraction"] * total), max_grad_norm=1.0,
                             logging_steps=10_000, save_strategy="no", report_to=[], seed=42, bf16=on_cuda,
                             use_cpu=not on_cuda, disable_tqdm=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Stamp()],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    fit_started = time.perf_counter()
    trainer.train()
    if on_cuda:
        torch.cuda.synchronize()
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    out = {"label": f"hf_batch{batch}", "batch": batch, "steps": trainer.state.global_step,
           "epochs": round(trainer.state.global_step / per_epoch, 2), "setup_s": round(fit_started - started, 2),
           "train_s": round(time.perf_counter() - fit_started, 2), "wall_s": round(time.perf_counter() - started, 2),
           "median_step_ms": round(1000 * statistics.median(gaps), 1) if gaps else None,
           "trained_tokens": sum(len(r["input_ids"]) for r in rows) * trainer.state.global_step // per_epoch}
    if on_cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    log(json.dumps(out))
    return out
