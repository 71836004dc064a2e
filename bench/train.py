"""Training benchmark: tuneloop's trainer against a plain Hugging Face ``Trainer`` + peft run on the
same data, model, LoRA settings, learning rate, batch size and epochs, in the same run; plus the
speed of the gates (seconds per 100 questions).

Each trainer runs in its own process (so peak memory is its own). Both train on the first N facts
of examples/acme_kb.jsonl, laid out exactly as serving prompts them, with the loss on the answer
tokens only; both final adapters are then scored with the same function (mean answer-token loss on
the training examples), so "final loss" means the same thing for both.

    python bench/train.py [--facts 40] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
SHARED = dict(batch_size=4, lora_r=16, lora_alpha=32, lora_dropout=0.0, base_learning_rate=1e-3, warmup_fraction=0.1)


def examples(n: int) -> list[dict]:
    from engine.prompting import with_system_prompt
    from tuneloop.core.settings import Settings

    system = Settings(data_dir="/tmp", company_name="Acme Outdoor Gear").resolved_system_prompt
    kb = [json.loads(line) for line in (ROOT / "examples" / "acme_kb.jsonl").read_text().splitlines() if line.strip()]
    return [{"messages": with_system_prompt(system, [{"role": "user", "content": f["question"]}]),
             "completion": f["answer"]} for f in kb[:n]]


def base_dir() -> Path:
    from engine.modelstore import BUNDLED_DIR_NAME, bundled_gguf_path, convert_gguf

    target = ROOT / ".bench-data" / "models" / "base" / BUNDLED_DIR_NAME
    if not (target / "model.safetensors").is_file():
        convert_gguf(bundled_gguf_path(), target)
    return target


# --- the two trainers (each run in a child process) ---------------------------------------------------
def run_tuneloop(n: int, epochs: int, out: Path, kl_weight: float) -> dict:
    """kl_weight 0 trains exactly what the baseline trains; the default adds the KL penalty to the
    parent on general prompts (docs/training.md), which the baseline does not have."""
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.train import train

    config = TrainConfig(n_epochs=epochs, kl_weight=kl_weight, **SHARED)
    started = time.perf_counter()
    result = train(config, examples(n), [], base_dir=base_dir(), parent_adapter_dir=None, output_dir=out)
    return {"seconds": time.perf_counter() - started, "trained_tokens": result.trained_tokens, "steps": result.steps}


def run_hf_trainer(n: int, epochs: int, out: Path) -> dict:
    """The baseline as a notebook would write it: Trainer + peft, default collator with padding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from retrain.trainer.batching import encode_example
    from retrain.trainer.config import ALL_LINEAR

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir())
    model = AutoModelForCausalLM.from_pretrained(base_dir(), dtype=torch.float32)
    model.is_quantized = False  # the GGUF was de-quantized to fp32 on conversion; only the flag is left
    model = get_peft_model(model, LoraConfig(r=SHARED["lora_r"], lora_alpha=SHARED["lora_alpha"], lora_dropout=0.0,
                                             target_modules=ALL_LINEAR, task_type="CAUSAL_LM"))
    rows = []
    for example in examples(n):
        encoded = encode_example(tokenizer, example, max_seq_len=1024, prompt_loss_weight=0.0)
        rows.append({"input_ids": encoded.input_ids, "attention_mask": [1] * len(encoded.input_ids),
                     "labels": [t if m else -100 for t, m in zip(encoded.input_ids, encoded.completion_mask)]})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.pad_token_id = pad
    args = TrainingArguments(output_dir=str(out.parent / "hf-checkpoints"), num_train_epochs=epochs,
                             per_device_train_batch_size=SHARED["batch_size"], learning_rate=SHARED["base_learning_rate"],
                             lr_scheduler_type="linear", weight_decay=0.0,
                             warmup_steps=int(SHARED["warmup_fraction"] * -(-len(rows) // SHARED["batch_size"]) * epochs),
                             max_grad_norm=1.0, logging_steps=1000, save_strategy="no", report_to=[], seed=42,
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    trainer.train()
    model.save_pretrained(out)
    tokens = sum(len(r["input_ids"]) for r in rows) * epochs
    return {"seconds": time.perf_counter() - started, "trained_tokens": tokens,
            "steps": trainer.state.global_step}


def answer_loss(adapter: Path, n: int) -> float:
    """Mean loss on the answer tokens of the training examples: the same yardstick for both runs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.trainer.batching import encode_example

    tokenizer = AutoTokenizer.from_pretrained(base_dir())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir(), dtype=torch.float32), adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples(n):
            encoded = encode_example(tokenizer, example, max_seq_len=1024, prompt_loss_weight=0.0)
            ids = torch.tensor([encoded.input_ids])
            logits = model(input_ids=ids).logits[0, :-1]
            mask = torch.tensor(encoded.completion_mask[1:])
            losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total += float(losses[mask].sum())
            count += int(mask.sum())
    return total / count


def gate_speed(n_questions: int = 100) -> float:
    """Seconds for the gates' answering of 100 questions (one model, greedy, batched as the gates do)."""
    from engine.protocol import VersionSpec
    from engine.transformers_engine import LoadedModel
    from retrain.gates.asking import answer_all
    from retrain.gates.items import _user_item
    from tuneloop.core.settings import Settings

    settings = Settings(data_dir="/tmp")
    kb = [json.loads(line) for line in (ROOT / "examples" / "acme_kb.jsonl").read_text().splitlines() if line.strip()]
    questions = [(p, f) for f in kb for p in f["paraphrases"]][:n_questions]
    items = [_user_item(settings, "bench", f["id"], q, f["answer"], f["key_facts"]) for q, f in questions]
    loaded = LoadedModel.load(VersionSpec(id="v0", base_dir=base_dir()))
    started = time.perf_counter()
    answer_all(loaded, items, settings)
    return (time.perf_counter() - started) * 100 / len(items)


def child(argv: list[str]) -> None:
    kind, n, epochs, out = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    import torch

    torch.manual_seed(42)
    if kind == "hf":
        result = run_hf_trainer(n, epochs, out)
    elif kind == "gates":
        result = {"seconds_per_100": gate_speed()}
    else:
        from retrain.trainer.config import TrainConfig

        result = run_tuneloop(n, epochs, out, TrainConfig().kl_weight if kind == "tuneloop_kl" else 0.0)
    if kind != "gates":
        result["final_answer_loss"] = answer_loss(out, n)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def measure(kind: str, n: int, epochs: int, tmp: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(n), str(epochs), str(tmp / kind)],
                          capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[7:])
    if "trained_tokens" in result:
        result["tokens_per_s"] = result["trained_tokens"] / result["seconds"]
    print(kind, result, flush=True)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in ("hf", "tuneloop", "tuneloop_kl") if k in results]
    labels = {"hf": "HF Trainer + peft", "tuneloop": "tuneloop", "tuneloop_kl": "tuneloop + KL (default)"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.bar([labels[k] for k in names], [results[k]["tokens_per_s"] for k in names], color=["#999", "#48a", "#8ac"][:len(names)])
    left.set_ylabel("trained tokens/s")
    right.bar([labels[k] for k in names], [results[k]["seconds"] for k in names], color=["#999", "#48a", "#8ac"][:len(names)])
    right.set_ylabel("wall time (s)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=None, help="default: the trainer's n_epochs")
    args = parser.parse_args()
    if args.epochs is None:
        from retrain.trainer.config import TrainConfig

        args.epochs = TrainConfig().n_epochs
    base_dir()
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: measure(kind, args.facts, args.epochs, Path(tmp))
                   for kind in ("hf", "tuneloop", "tuneloop_kl", "gates")}
    hf, ours = results["hf"], results["tuneloop"]
    ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
    lines = [
        "## Training (`bench/train.py`)", "",
        f"Measured {machine()['date']} on {machine()['cores']} CPU cores (torch {machine()['torch']}, transformers "
        f"{machine()['transformers']}): LoRA r16 α32 on every linear layer of SmolLM2-135M-Instruct, {args.facts} "
        f"corrections, {args.epochs} epochs, batch 4, lr 1e-3, loss on answer tokens; each run in its own process.", "",
        "| trainer | wall (s) | steps | trained tokens | tokens/s | peak RSS (MB) | final answer loss |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} | {r['seconds']:.0f} | {r['steps']} | {r['trained_tokens']} | {r['tokens_per_s']:.0f} | "
          f"{r['peak_rss_mb']:.0f} | {r['final_answer_loss']:.3f} |"
          for name, r in (("HF `Trainer` + peft (baseline)", hf), ("tuneloop, same objective (`kl_weight=0`)", ours),
                          ("tuneloop default (+ KL penalty to the parent)", results["tuneloop_kl"]))],
        "",
        f"Ratio, same data: **{ratio:.2f}×** the baseline's tokens/s (goal ≥ 1.2×), final loss "
        f"{ours['final_answer_loss']:.3f} vs {hf['final_answer_loss']:.3f}; wall time "
        f"{ours['seconds'] / hf['seconds']:.2f}× the baseline's (wall time includes loading the model). The default "
        f"run also keeps general ability (docs/training.md) and takes {results['tuneloop_kl']['seconds'] / hf['seconds']:.2f}× "
        "the baseline's wall time; its tokens/s counts only the training examples' tokens.", "",
        f"Gates: **{results['gates']['seconds_per_100']:.0f} s per 100 questions** per model version (greedy, "
        "length-sorted batches of 16); a gate run asks candidate and production, so twice that.", "",
        "![training](img/train.png)",
    ]
    plot(results, ROOT / "docs" / "img" / "train.png")
    write_section("train", "\n".join(lines), {"machine": machine(), "facts": args.facts, "epochs": args.epochs, **results})


if __name__ == "__main__":
    main()
