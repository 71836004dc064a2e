"""What each part of a training round buys: phrasings, memory-context examples, train-until-learned.

One round from the base model on the first N facts of examples/acme_kb.jsonl, each correction with
its three paraphrases as accepted phrasings (so the trainer trains on two and holds one out, as the
generalises gate does). Runs the default TrainConfig, then the same with one part switched off, each
in this process one after the other, and asks every candidate (greedy, as the gates do):

* the corrected questions themselves, memory off (the learned gate);
* the held-out phrasing of each correction, memory off (the generalises gate) and memory on (the
  verified answers MiniLM retrieves for it, laid out as serving lays them out);
* the general questions (retrain/gates/general/questions.json), against the base model's answers.

    python bench/ablation.py [--facts 6]

Writes bench/results/ablation.json (after every variant, so a partial run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine  # noqa: E402

sys.path.insert(0, str(ROOT))
KB = [json.loads(line) for line in (ROOT / "examples" / "acme_kb.jsonl").read_text().splitlines() if line.strip()]
VARIANTS = {
    "all on (defaults)": {},
    "phrasings off": {"train_on_phrasings": False},
    "memory-context examples off": {"memory_examples_fraction": 0.0},
    "train-until-learned off": {"stop_when_learned": False},
}


def examples(facts: list[dict], system: str) -> list:
    from feedback.examples import TrainingExample

    return [TrainingExample(id=f["id"], correction_id=f["id"], lineage_id=f["id"], source="correction",
                            key_facts=f["key_facts"], alternative_questions=f["paraphrases"],
                            messages=[{"role": "system", "content": system}, {"role": "user", "content": f["question"]}],
                            completion=f["answer"]) for f in facts]


def memory_for(question: str, facts: list[dict], vectors, settings) -> str:
    """What correction memory would add for ``question`` (top hits by question similarity)."""
    from feedback.memory.service import MemoryHit, memory_context
    from engine.embeddings import embed

    scores = vectors @ embed([question])[0]
    order = [i for i in scores.argsort()[::-1][:settings.memory_max_hits] if scores[i] >= settings.memory_threshold]
    hits = [MemoryHit(facts[i]["id"], facts[i]["question"], facts[i]["answer"], float(scores[i])) for i in order]
    return memory_context(hits) if hits else ""


def questions(facts: list[dict], settings) -> list:
    """GateItems: canonical, held-out memory off, held-out memory on, general."""
    from engine.prompting import system_with_memory
    from retrain.trainer.augment import held_out_phrasing
    from retrain.gates.items import GateItem, general_items
    from engine.embeddings import embed

    system = settings.resolved_system_prompt
    vectors = embed([f["question"] for f in facts])
    items = []
    for fact, example in zip(facts, examples(facts, system)):
        held = held_out_phrasing(example)
        items.append(GateItem("learned", fact["id"], example.messages, fact["answer"], fact["key_facts"]))
        user = [{"role": "user", "content": held}]
        items.append(GateItem("held_out_memory_off", fact["id"], [{"role": "system", "content": system}, *user],
                              fact["answer"], fact["key_facts"]))
        memory = memory_for(held, facts, vectors, settings)
        items.append(GateItem("held_out_memory_on", fact["id"],
                              [{"role": "system", "content": system_with_memory(system, memory)}, *user],
                              fact["answer"], fact["key_facts"]))
    return items + general_items(settings)


def ask(settings, spec, items) -> dict:
    from engine.transformers_model import LoadedModel
    from retrain.gates.asking import answer_all
    from retrain.gates.matching import match_answers

    loaded = LoadedModel.load(spec, device=settings.device, dtype=settings.dtype)
    answers = answer_all(loaded, items, settings)
    matches = match_answers(answers, [i.reference for i in items], [i.key_facts for i in items],
                            threshold=settings.gate_similarity_threshold)
    out: dict = {}
    for item, match, answer in zip(items, matches, answers):
        out.setdefault(item.gate, []).append({"name": item.name, "passed": match.passed, "answer": answer})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    from engine.protocol import VersionSpec
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.interface import RunPaths
    from retrain.trainer.train import train
    from tuneloop.core.settings import Settings

    base = ROOT / ".bench-data" / "models" / "base" / "smollm2-135m-instruct"
    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    facts = KB[:args.facts]
    items = questions(facts, settings)
    results = {"facts": len(facts), "machine": machine(), "runs": {}}
    path = RESULTS / "ablation.json"
    step = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    step("base model answers")
    results["runs"]["base model"] = {"answers": ask(settings, VersionSpec("v0", base), items)}
    path.write_text(json.dumps(results, indent=2))
    for name in args.variants.split(","):
        step(f"training: {name}")
        started = time.perf_counter()
        out = Path(tempfile.mkdtemp()) / "adapter"
        result = train(TrainConfig(**VARIANTS[name]), examples(facts, settings.resolved_system_prompt), [],
                       paths=RunPaths(base, None, out))
        seconds = time.perf_counter() - started
        step(f"asking: {name} (trained {result.steps} steps in {seconds:.0f}s)")
        results["runs"][name] = {"metrics": result.metrics, "train_seconds": seconds,
                                 "answers": ask(settings, VersionSpec(name, base, out), items)}
        path.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    base_general = {a["name"]: a["passed"] for a in results["runs"]["base model"]["answers"]["general"]}
    lines = ["| run | steps (stop) | training (s) | learned (memory off) | held-out phrasing, memory off | "
             "held-out phrasing, memory on | general kept (of base's) |", "|---|---|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        a = run["answers"]
        share = lambda gate: f"{sum(x['passed'] for x in a[gate])}/{len(a[gate])}"  # noqa: E731
        kept = sum(x["passed"] for x in a["general"] if base_general.get(x["name"]))
        m = run.get("metrics")
        steps = f"{m['stopped_at_step']} ({m['stop_reason']})" if m else "—"
        seconds = f"{run['train_seconds']:.0f}" if m else "—"
        lines.append(f"| {name} | {steps} | {seconds} | {share('learned')} | {share('held_out_memory_off')} | "
                     f"{share('held_out_memory_on')} | {kept}/{sum(base_general.values())} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
