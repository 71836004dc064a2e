"""Training benchmark, for every device present: tuneloop's trainer against Hugging Face ``Trainer`` +
peft on the same examples, measured in the same run.

Both train on the first N facts of examples/acme_kb.jsonl as approved corrections (system prompt +
question, the two logged customer wordings as accepted phrasings), expanded as a round expands them
(``retrain.trainer.train.expand_for_training``: 40 corrections -> 120 examples), loss on the answer
tokens only, the same LoRA (r16, alpha 32, every linear projection) and learning rate.

- **CUDA** (when present): a whole round of our trainer at its defaults (token-budget batches, KL
  anchors in the training forward pass, no per-step host sync) against HF ``Trainer`` at its best batch
  size for the device (a short scan of 4..64, bf16, length-grouped), for the same number of epochs.
  ``stop_when_learned`` is off for both: the weights may be random (a GPU host without the model's
  files), and then nothing is ever "learned"; a round that learns stops earlier.
- **CPU**: a round takes tens of minutes on 2 cores, so the CPU section measures step times over a few
  steps: today's defaults (batch 4, the KL penalty on 4 anchors every step), the new defaults, the
  levers behind them (token budgets, ``kl_every``, ``kl_batch_size``) and HF ``Trainer``, each projected
  to the round's steps.

    python bench/train.py [--facts 40] [--steps 6]      # every device present; writes docs/benchmarks.md
    python bench/train.py --gpu-only --model-files DIR   # a GPU host without the server's packages (see
                                                         # ../shared/gpu): random weights of DIR's config

Results: bench/results/train.json (or $RESULT_DIR/train.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.hf_trainer import HF_BATCHES, LORA, hf_rows, log, run_hf  # noqa: E402

TODAY = dict(batch_tokens=0, batch_size=4, kl_every=1, kl_batch_size=4)  # the defaults before 2026-12-04


# --- data and model ----------------------------------------------------------------------------------
def corrections(n: int, work: Path) -> list:
    """The first ``n`` facts as approved corrections, laid out as feedback.export lays them out."""
    from engine.prompting import with_system_prompt
    from feedback.examples import TrainingExample
    from tuneloop.core.settings import Settings

    system = Settings(data_dir=str(work), company_name="Acme Outdoor Gear").resolved_system_prompt
    kb = [json.loads(line) for line in (ROOT / "examples" / "acme_kb.jsonl").read_text().splitlines() if line.strip()]
    return [TrainingExample(messages=with_system_prompt(system, [{"role": "user", "content": f["question"]}]),
                            completion=f["answer"], id=f"ex_{f['id']}", correction_id=f"corr_{f['id']}",
                            lineage_id=f"corr_{f['id']}", split_key=f"corr_{f['id']}", source="knowledge",
                            key_facts=list(f["key_facts"]), alternative_questions=list(f["customer_wordings"]))
            for f in kb[:n]]


def bundled_base() -> Path:
    from engine.modelstore import BUNDLED_DIR_NAME, bundled_gguf_path, convert_gguf

    target = ROOT / ".bench-data" / "models" / "base" / BUNDLED_DIR_NAME
    if not (target / "model.safetensors").is_file():
        convert_gguf(bundled_gguf_path(), target)
    return target


def random_base(model_files: Path, work: Path) -> Path:
    """The architecture of ``model_files`` (config + tokenizer) with random weights (seed 0), saved in fp32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_files), dtype=torch.float32)
    target = work / "random-base"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_files).save_pretrained(target)
    return target


# --- our trainer -------------------------------------------------------------------------------------
def run_ours(base: Path, examples: list, work: Path, label: str, *, device: str, steps: int = 0,
             **overrides) -> dict:
    """``retrain.trainer.train.train`` as the worker calls it. ``steps`` > 0: stop after that many steps
    (should_cancel) and report the median step time; 0: the whole round, timed to its last step."""
    import torch

    from retrain.trainer.config import TrainConfig
    from retrain.trainer.interface import RunHooks, RunPaths
    from retrain.trainer.interface import TrainingCancelled
    from retrain.trainer.train import train

    config = TrainConfig(**{**LORA, "device": device, "stop_when_learned": False, **overrides})
    calls: list[float] = []
    events: list[dict] = []

    def should_cancel() -> bool:  # asked before each micro-batch: one call a step at gradient_accumulation 1
        if steps and device == "cuda":
            torch.cuda.synchronize()  # a probe times each step whole (a round is timed to its last step)
        calls.append(time.perf_counter())
        return bool(steps) and len(calls) > steps

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = None
    try:
        result = train(config, examples, [], paths=RunPaths(base, None, work / label), hooks=RunHooks(
            should_cancel=should_cancel, progress=lambda e: events.append({**e, "at": time.perf_counter()})))
    except TrainingCancelled:
        pass
    ended = time.perf_counter()
    out = {"label": label, "config": {k: overrides.get(k, getattr(config, k)) for k in sorted({*overrides, *TODAY})},
           "wall_s": round(ended - started, 2), "setup_s": round(calls[0] - started, 2) if calls else None}
    if steps:
        gaps = [b - a for a, b in zip(calls[1:], calls[2:])]  # after the first step (warm-up)
        out.update(steps=len(gaps) + 1, median_step_ms=round(1000 * statistics.median(gaps), 1) if gaps else None)
    if result is not None:
        metrics = result.metrics
        out.update(steps=result.steps, epochs=metrics["n_epochs"], trained_tokens=result.trained_tokens,
                   batch_tokens=metrics.get("batch_tokens"), checkpointing=metrics.get("gradient_checkpointing"),
                   train_s=round(events[-1]["at"] - calls[0], 2), final_loss=round(metrics["train_loss"], 4))
        out["tokens_per_s"] = round(result.trained_tokens / out["train_s"], 1)
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    log(json.dumps(out))
    return out


def plan_of(config_overrides: dict, examples: list, base: Path, device: str) -> dict:
    """Epochs, steps and examples a round of ``examples`` trains at these settings (no training)."""
    from transformers import AutoTokenizer

    from retrain.trainer.budget import BatchBudget
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.supervised_run import RunData, SupervisedRun
    from retrain.trainer.train import _encode_all, expand_for_training

    config = TrainConfig(**{**LORA, "device": device, **config_overrides})
    encoded = [e for e, _ in _encode_all(AutoTokenizer.from_pretrained(base), expand_for_training(config, examples),
                                         config)]
    budget = BatchBudget(max(config.batch_tokens, 0), False, "plan")
    run = SupervisedRun(config, None, RunData(encoded, [], 0), budget=budget)
    return {"examples": len(encoded), "epochs": run.n_epochs, "steps": run.total_steps,
            "tokens_per_example": round(statistics.fmean(len(e.input_ids) for e in encoded), 1)}


# --- the baseline --------------------------------------------------------------------------------------
# --- the device sections -------------------------------------------------------------------------------
def cuda_section(base: Path, examples: list, work: Path, section: dict, device: str = "cuda",
                 save=lambda: None) -> dict:
    """Fills ``section``. ``device``: cuda; cpu only for a dry run of this code on a machine without a GPU
    (BENCH_TRAIN_DRY). Each part is recorded (and ``save()``d) as it ends; a failed one under ``errors``."""
    import torch

    section.update(device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)", errors={})

    def part(name: str, fn, *args, **kwargs):
        try:
            section[name] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a benchmark records a failed part and goes on
            log(f"{name} FAILED: {exc!r}")
            section["errors"][name] = repr(exc)[:500]
        save()
        return section.get(name)

    part("warm_up", run_ours, base, examples, work, "warm_up", device=device, steps=3)
    ours = part("ours", run_ours, base, examples, work, "cuda_defaults", device=device)
    part("ours_today_defaults_probe", run_ours, base, examples, work, "cuda_today", device=device, steps=12, **TODAY)
    for budget, ckpt in ((2048, "off"), (16384, "off"), (16384, "on")):
        part(f"ours_budget_{budget}_ckpt_{ckpt}", run_ours, base, examples, work, f"b{budget}{ckpt}", device=device,
             batch_tokens=budget, gradient_checkpointing=ckpt)
    rows, pad = hf_rows(base, examples)
    scan = [r for b in HF_BATCHES if (r := part(f"hf_scan_{b}", run_hf, base, rows, pad, work, device=device,
                                                batch=b, steps=8))]
    if scan and ours:
        best = min(scan, key=lambda r: r["median_step_ms"] / r["batch"])
        hf = part("hf", run_hf, base, rows, pad, work, device=device, batch=best["batch"], epochs=ours["epochs"])
        if hf:
            section["speedup_train_s"] = round(hf["train_s"] / ours["train_s"], 2)
            section["speedup_wall_s"] = round(hf["wall_s"] / ours["wall_s"], 2)
    return section


def step_times(base: Path, examples: list, settings: dict[str, dict], steps: int) -> dict[str, dict]:
    """Median step time of each setting, in one process on one loaded model with one set of KL anchors
    (a CPU round's setup, minutes on a busy 2-core machine, is the same for every setting). The settings
    take turns, one step each, so a change in the machine's load falls on all of them alike."""
    import torch

    from retrain.trainer.budget import BatchBudget
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.kl_anchor import build_anchors
    from retrain.trainer.interface import RunPaths
    from retrain.trainer.supervised_run import RunData, SupervisedRun
    from retrain.trainer.train import _encode_all, expand_for_training, start_training

    first = TrainConfig(**{**LORA, "device": "cpu"})
    model, tokenizer, device = start_training(first, RunPaths(base, None, base / "never-written"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [e for e, _ in _encode_all(tokenizer, expand_for_training(first, examples), first)]
    anchors = build_anchors(model, tokenizer, examples, first, pad)
    models = {0: model}  # by lora_layers: a fresh adapter is zero, so every layout has the same anchors
    runs = {}
    for label, overrides in settings.items():
        config = TrainConfig(**{**LORA, "device": "cpu", **overrides})
        if config.lora_layers not in models:
            models[config.lora_layers] = start_training(config, RunPaths(base, None, base / "never-written"))[0]
        model = models[config.lora_layers]
        run = SupervisedRun(config, model, RunData(encoded, [], pad, anchors=anchors if config.kl_weight > 0 else []),
                   budget=BatchBudget(max(config.batch_tokens, 0), False, "bench"))
        params = [p for p in model.parameters() if p.requires_grad]
        run.optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        runs[label] = (run, params, [])
    for each in models.values():
        each.train()
    for step in range(steps + 1):
        for label, (run, params, gaps) in runs.items():
            started = time.perf_counter()
            run._accumulate(run.plan[0][step % len(run.plan[0]):][:1])
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.step += 1
            if step:  # the first is a warm-up
                gaps.append(time.perf_counter() - started)
    out = {}
    for label, (run, _params, gaps) in runs.items():
        # the mean, not the median: with kl_every k, one step in k carries the penalty
        out[label] = {"label": label, "config": settings[label], "steps": len(gaps),
                      "median_step_ms": round(1000 * statistics.fmean(gaps), 1)}
        log(json.dumps(out[label]))
    return out


def cpu_section(base: Path, examples: list, work: Path, steps: int) -> dict:
    from retrain.trainer.config import TrainConfig

    new = {k: getattr(TrainConfig(), k) for k in TODAY}
    new["batch_tokens"] = 0  # what auto resolves to on a CPU
    settings = {"today_defaults": TODAY, "new_defaults": new, "kl_off": {**TODAY, "kl_weight": 0.0},
                "kl_every_4": {**TODAY, "kl_every": 4}, "kl_batch_1": {**TODAY, "kl_batch_size": 1},
                "budget_2048": {**TODAY, "batch_tokens": 2048},
                "lora_top_10_layers": {**TODAY, "lora_layers": 10}}
    if new == TODAY:  # the CPU defaults did not change: one run stands for both
        del settings["new_defaults"]
    section: dict = {"device": "cpu", "cores": os.cpu_count(), "steps_timed": steps, "runs": {}}
    timed = step_times(base, examples, settings, steps)
    for label, overrides in settings.items():
        run = timed[label]
        run["plan"] = plan_of(overrides, examples, base, "cpu")
        run["projected_cap_s"] = round(run["plan"]["steps"] * run["median_step_ms"] / 1000, 1)
        section["runs"][label] = run
    rows, pad = hf_rows(base, examples)
    section["hf"] = hf = run_hf(base, rows, pad, work, device="cpu", batch=4, steps=steps)
    hf["projected_cap_s"] = round(section["runs"]["today_defaults"]["plan"]["steps"] * hf["median_step_ms"] / 1000, 1)
    today = section["runs"]["today_defaults"]
    now = section["runs"].get("new_defaults", today)
    section["speedup_new_vs_today"] = round(today["projected_cap_s"] / now["projected_cap_s"], 2)
    return section


def markdown(result: dict) -> str:
    lines = ["## Training (`bench/train.py`)", "",
             f"Measured {result['date']} ({result['versions']}); {result['facts']} corrections = "
             f"{result['examples']} examples after phrasings and memory copies; LoRA r16 α32 on every linear "
             f"projection, lr 1e-3; weights: {result['weights']}.", ""]
    if "cuda" in result:
        c = result["cuda"]
        o, h = c["ours"], c["hf"]
        lines += [f"### {c['device']}", "",
                  "| trainer | batches | steps | epochs | training (s) | wall (s) | trained tokens/s | peak GPU (MiB) |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| tuneloop defaults | {o['batch_tokens']} tokens{' + checkpointing' if o['checkpointing'] else ''} | "
                  f"{o['steps']} | {o['epochs']} | {o['train_s']} | {o['wall_s']} | {o['tokens_per_s']:.0f} | {o['peak_gpu_mib']} |",
                  f"| HF `Trainer` + peft (best of batch {', '.join(map(str, HF_BATCHES))}: {h['batch']}, bf16) | "
                  f"{h['batch']} examples | {h['steps']} | {h['epochs']} | {h['train_s']} | {h['wall_s']} | "
                  f"{h['trained_tokens'] / h['train_s']:.0f} | {h['peak_gpu_mib']} |", "",
                  f"tuneloop is **{c['speedup_train_s']}×** the baseline in training time ({c['speedup_wall_s']}× in "
                  f"wall time, model loading and the KL anchors' answers included). Today's defaults (batch 4, KL "
                  f"forward apart) on the same card: {c['ours_today_defaults_probe']['median_step_ms']} ms a step.", ""]
    if "cpu" in result:
        c = result["cpu"]
        lines += [f"### CPU ({c['cores']} cores): step times over {c['steps_timed']} steps", "",
                  "| settings | ms a step | steps in the round's cap | projected cap (s) |", "|---|---|---|---|"]
        for label, run in c["runs"].items():
            lines.append(f"| {label} `{json.dumps(run['config'])}` | {run['median_step_ms']} | {run['plan']['steps']} | "
                         f"{run['projected_cap_s']} |")
        lines += [f"| HF `Trainer` + peft, batch 4 | {c['hf']['median_step_ms']} | "
                  f"{c['runs']['today_defaults']['plan']['steps']} | {c['hf']['projected_cap_s']} |", "",
                  f"New defaults vs today's: **{c['speedup_new_vs_today']}×** (projected on the round's cap; a round "
                  "that learns stops earlier, at the same step for both when the batches are the same).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=6, help="steps timed per CPU setting")
    parser.add_argument("--gpu-only", action="store_true", help="only the CUDA section; no docs written")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--model-files", type=Path, default=None,
                        help="a model directory's config and tokenizer: random weights of that architecture")
    args = parser.parse_args()
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = random_base(args.model_files, work) if args.model_files else bundled_base()
        examples = corrections(args.facts, work)
        result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "facts": args.facts,
                        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
                        "weights": f"random, {args.model_files.name}'s architecture" if args.model_files
                        else "SmolLM2-135M-Instruct (bundled)",
                        "examples": plan_of({}, examples, base, "cpu")["examples"]}
        out = os.environ.get("RESULT_DIR")

        def save() -> None:
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / "train.json").write_text(json.dumps(result, indent=2, default=str))

        if os.environ.get("BENCH_TRAIN_DRY") or (torch.cuda.is_available() and not args.cpu_only):
            result["cuda"] = {}
            cuda_section(base, examples, work, result["cuda"],
                         "cpu" if os.environ.get("BENCH_TRAIN_DRY") else "cuda", save)
        if not args.gpu_only:
            result["cpu"] = cpu_section(base, examples, work, args.steps)
        save()
    try:
        text = markdown(result)
    except (KeyError, TypeError) as exc:  # a part failed: the JSON has what was measured
        text = f"(no table: {exc!r}; see the JSON)"
    print(text)
    if not args.gpu_only:
        sys.path.insert(0, str(ROOT / "bench"))
        from common import write_section

        write_section("train", text, result)


if __name__ == "__main__":
    main()
