"""Does a DPO pass after supervised training stop the bot repeating the answers customers disliked?

One round from the base model on the first N facts of examples/acme_kb.jsonl, as `bench/ablation.py`
lays it out (each fact's three paraphrases accepted as phrasings: two trained, one held out). The
disliked answers are the base model's own greedy answers to the canonical questions (what the customer
gave thumbs-down). Two runs:

* **supervised**: the default round;
* **supervised then DPO**: the same round, then a DPO pass on (question, approved answer, disliked
  answer) pairs continuing from the supervised adapter, referenced to it: what
  `TUNELOOP_RETRAIN_METHOD=supervised_then_dpo` makes the scheduler run.

Measured on the canonical questions and on the held-out phrasings (memory off): answers with every key
fact, answers that repeat the disliked answer (difflib ratio ≥ 0.8 to it), general questions kept,
and the seconds each pass costs.

    python bench/dpo.py [--facts 8]

Writes its section of docs/benchmarks.md and bench/results/dpo.json.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import KB, ask, examples, questions  # noqa: E402
from common import ROOT, machine, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
REPEAT_RATIO = 0.8


def repeats(answer: str, disliked: str) -> bool:
    norm = lambda text: " ".join(text.lower().split())  # noqa: E731
    return difflib.SequenceMatcher(None, norm(answer), norm(disliked)).ratio() >= REPEAT_RATIO


def score(run: dict, base: dict) -> dict:
    """Per question set: key facts right, disliked answer repeated; general questions kept."""
    out = {}
    for gate in ("learned", "held_out_memory_off"):
        pairs = list(zip(run[gate], base[gate]))
        out[gate] = {"n": len(pairs), "right": sum(a["passed"] for a, _ in pairs),
                     "repeats": sum(repeats(a["answer"], b["answer"]) for a, b in pairs)}
    kept = {b["name"] for b in base["general"] if b["passed"]}
    out["general_kept"] = f"{sum(a['passed'] for a in run['general'] if a['name'] in kept)}/{len(kept)}"
    return out


def preference_pairs(train_examples: list, disliked: dict[str, str]) -> list[dict]:
    """OpenAI's preference lines, as `feedback.preferences` writes them from a disliked answer and its
    approved correction."""
    return [{"input": {"messages": e.messages}, "preferred_output": [{"role": "assistant", "content": e.completion}],
             "non_preferred_output": [{"role": "assistant", "content": disliked[e.id]}]}
            for e in train_examples if disliked.get(e.id, "").strip() and disliked[e.id].strip() != e.completion]


def run(facts_n: int, dpo_lr_multiplier: float = 1.0) -> dict:
    from engine.protocol import VersionSpec
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.config import DEFAULT_BETA
    from retrain.trainer.dpo import train_dpo
    from retrain.trainer.interface import RunPaths
    from retrain.trainer.train import train
    from tuneloop.core.settings import Settings

    from engine.modelstore import BUNDLED_DIR_NAME, bundled_gguf_path, convert_gguf

    base = ROOT / ".bench-data" / "models" / "base" / BUNDLED_DIR_NAME
    if not (base / "model.safetensors").is_file():
        convert_gguf(bundled_gguf_path(), base)
    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    facts = KB[:facts_n]
    items = questions(facts, settings)
    step = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    step("base model answers (the disliked ones)")
    base_answers = ask(settings, VersionSpec("v0", base), items)
    disliked = {f["id"]: a["answer"] for f, a in zip(facts, base_answers["learned"])}
    train_examples = examples(facts, settings.resolved_system_prompt)
    config = TrainConfig()
    work = Path(tempfile.mkdtemp())
    step("supervised round")
    started = time.perf_counter()
    supervised = train(config, train_examples, [], paths=RunPaths(base, None, work / "sft"))
    sft_seconds = time.perf_counter() - started
    pairs = preference_pairs(train_examples, disliked)
    step(f"DPO pass on {len(pairs)} pairs (beta={DEFAULT_BETA})")
    started = time.perf_counter()
    dpo_config = TrainConfig(learning_rate_multiplier=dpo_lr_multiplier)
    dpo = train_dpo(dpo_config, DEFAULT_BETA, pairs, paths=RunPaths(base, supervised.output_dir, work / "dpo"))
    dpo_seconds = time.perf_counter() - started
    step("asking both")
    runs = {"supervised": ask(settings, VersionSpec("sft", base, supervised.output_dir), items),
            "supervised then DPO": ask(settings, VersionSpec("dpo", base, dpo.output_dir), items)}
    return {"facts": len(facts), "pairs": len(pairs), "beta": DEFAULT_BETA, "machine": machine(),
            "dpo_learning_rate": dpo_config.dpo_learning_rate,
            "seconds": {"supervised": sft_seconds, "dpo": dpo_seconds},
            "steps": {"supervised": supervised.steps, "dpo": dpo.steps},
            "base": score(base_answers, base_answers), "runs": {k: score(v, base_answers) for k, v in runs.items()},
            "answers": {"base": base_answers, **runs}}


def report(results: dict) -> str:
    m = results["machine"]
    lines = ["## Supervised then DPO (`bench/dpo.py`)", "",
             f"Measured {m['date']} on {m['cores']} CPU cores, SmolLM2-135M-Instruct: one round from the base model "
             f"on {results['facts']} facts, then a DPO pass on {results['pairs']} (question, approved answer, "
             f"disliked answer) pairs, beta {results['beta']}, learning rate {results.get('dpo_learning_rate', 1e-3):g}. The disliked answers are the base model's own answers "
             "to the canonical questions; an answer *repeats* one when difflib's ratio to it is ≥ 0.8.", "",
             "| run | canonical: key facts | canonical: repeats the disliked answer | held-out phrasing: key facts | "
             "held-out phrasing: repeats the disliked answer | general kept | training (s) |",
             "|---|---|---|---|---|---|---|"]
    seconds = {"base model": "—", "supervised": f"{results['seconds']['supervised']:.0f}",
               "supervised then DPO": f"{results['seconds']['supervised']:.0f} + {results['seconds']['dpo']:.0f}"}
    for name, s in [("base model", results["base"]), *results["runs"].items()]:
        c, h = s["learned"], s["held_out_memory_off"]
        lines.append(f"| {name} | {c['right']}/{c['n']} | {c['repeats']}/{c['n']} | {h['right']}/{h['n']} | "
                     f"{h['repeats']}/{h['n']} | {s['general_kept']} | {seconds[name]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=8, help="facts (corrections) in the round")
    parser.add_argument("--dpo-lr-multiplier", type=float, default=1.0,
                        help="learning_rate_multiplier of the DPO pass (1.0: the default dpo_base_learning_rate, 2e-5)")
    args = parser.parse_args()
    results = run(args.facts, args.dpo_lr_multiplier)
    name = "dpo-own-lr" if args.dpo_lr_multiplier == 1.0 else f"dpo-own-lr-x{args.dpo_lr_multiplier:g}"
    write_section(name, report(results), results)


if __name__ == "__main__":
    main()
