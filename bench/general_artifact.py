"""How much of a round's "general loss" is the artifact, not the training?

`bench/loop.py` asks the general questions (bench/general_questions.json, 126 with key facts) of the
base model before a round and of the trained version after it. Those are two different artifacts: the
base serves the bundled Q4_1 GGUF, a trained version serves a merged Q8_0 GGUF written from the
de-quantised weights plus the adapter. This script asks the same questions, through llama.cpp as
serving runs it (greedy, flash attention, a q8_0 KV cache), of:

* the bundled Q4_1 GGUF (what version 0 serves);
* the base weights written as a merged Q8_0 GGUF with **no** adapter (what a round that changed
  nothing would serve), and as F16;
* transformers float32 on the base weights (what the trainer starts from).

The difference between the first two is the part of a "loss" the artifact alone makes.

    python bench/general_artifact.py [--data-dir .bench-data]

Writes bench/results/general_artifact.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_section  # noqa: E402
from gguf_artifact import MAX_TOKENS, LlamaArtifact, transformers_answers  # noqa: E402

sys.path.insert(0, str(ROOT))
GENERAL = json.loads((ROOT / "bench" / "general_questions.json").read_text())


def right(answers: list[str]) -> int:
    return sum(_right_one(a, q) for a, q in zip(answers, GENERAL))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".bench-data",
                        help="where bench/loop.py keeps the converted base model")
    args = parser.parse_args()

    import torch

    from engine.chat_tokenizer import ChatTokenizer
    from engine.gguf_files import write_gguf
    from engine.modelstore import BUNDLED_DIR_NAME, bundled_gguf_path, convert_gguf
    from engine.protocol import VersionSpec
    from engine.transformers_model import LoadedModel
    from tuneloop.core.settings import Settings

    torch.set_num_threads(2)
    settings = Settings(data_dir=args.data_dir)
    base_dir = args.data_dir / "models" / "base" / BUNDLED_DIR_NAME
    if not (base_dir / "model.safetensors").is_file():
        convert_gguf(bundled_gguf_path(), base_dir)
    spec = VersionSpec("base", base_dir, None)
    system = {"role": "system", "content": settings.resolved_system_prompt}
    prompts = [[system, {"role": "user", "content": q["question"]}] for q in GENERAL]
    tokenizer = ChatTokenizer(base_dir)
    work = Path(tempfile.mkdtemp(prefix="general-artifact-"))
    loaded = LoadedModel.load(spec, device="cpu", dtype="float32")
    artifacts = [("bundled Q4_1 (version 0)", bundled_gguf_path())]
    for quantization in ("Q8_0", "F16"):
        artifacts.append((f"base weights, merged {quantization}, no adapter",
                          write_gguf(loaded.model, loaded.tokenizer, work / f"base-{quantization}.gguf",
                                     quantization=quantization)))
    del loaded
    rows, answers_by = [], {}
    for name, path in artifacts:
        print(f"{name} ...", flush=True)
        artifact = LlamaArtifact(path, None, "q8_0")
        answers, tok_s = artifact.answers(tokenizer, prompts)
        artifact.close()
        answers_by[name] = answers
        rows.append({"artifact": name, "right": right(answers), "tok_s": tok_s})
        print(rows[-1], flush=True)
    reference = "transformers float32, base weights"
    answers_by[reference] = transformers_answers(settings, spec, prompts)
    rows.append({"artifact": reference, "right": right(answers_by[reference])})
    first = answers_by[artifacts[0][0]]
    for row in rows:
        mine = answers_by[row["artifact"]]
        row["same_as_version_0"] = sum(a == b for a, b in zip(mine, first))
        row["flipped_vs_version_0"] = sum(_right_one(a, q) != _right_one(b, q) for a, b, q in zip(mine, first, GENERAL))
    results = {"n": len(GENERAL), "max_tokens": MAX_TOKENS, "rows": rows, "machine": machine()}
    write_section("general_artifact", report(results), results)


def _right_one(answer: str, question: dict) -> bool:
    from retrain.gates.matching import missing_key_facts

    return not missing_key_facts(answer, question["key_facts"])


def report(results: dict) -> str:
    info = results["machine"]
    lines = ["## General questions: the artifact alone (`bench/general_artifact.py`)", "",
             f"Measured {info['date']} on {info['cores']} CPU cores: bench/general_questions.json ({results['n']} "
             f"questions with key facts), greedy, {results['max_tokens']} tokens at most, llama.cpp with flash "
             "attention and a q8_0 KV cache as serving runs it, the company's system prompt; no training at all.",
             "", "| artifact | right | same text as version 0 | right/wrong flipped against version 0 |",
             "|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['artifact']} | {row['right']}/{results['n']} | {row['same_as_version_0']} | "
                     f"{row['flipped_vs_version_0']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
