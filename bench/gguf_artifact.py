"""Which GGUF should a version be? Issue 15 asked to choose by measurement between a merged GGUF per
version and the base GGUF plus the round's LoRA adapter in llama.cpp's adapter format. On one trained
adapter (by default round 1 of the last `bench/loop.py` run), each candidate artifact is written, loaded
and asked the gate's kinds of questions greedily, beside transformers on the same adapter in float32
(the weights that were trained and that the learned check passed):

* merged Q8_0 (today's default, ``TUNELOOP_GGUF_QUANTIZATION``), merged Q4_1 (the bundled base's type),
  merged F16;
* the bundled Q4_1 base (the very weights transformers de-quantised and trained on) + the adapter in F16;
* merged Q8_0 with flash attention, and with a q8_0 KV cache (which needs it): what the serving
  context's cache may be (``TUNELOOP_LLAMACPP_KV_CACHE_TYPE``), judged on the same questions.

Per artifact: seconds to write it, its size, seconds to load it (for the adapter: onto a base already
loaded, which is what a hot swap would cost), decode tokens/s of one chat, and agreement with
transformers: the same answer text, and the key facts found in the corrections' own questions (the
learned gate), in their held-out rewordings (generalises) and in the general questions.

    python bench/gguf_artifact.py [--data-dir /tmp/loopdata] [--adapter DIR] [--corrections 40] [--rewordings 1]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

MAX_TOKENS = 48


def question_sets(n_corrections: int, n_rewordings: int) -> dict[str, list[tuple[str, list[str]]]]:
    """(question, key facts) per gate kind: the trained facts' own questions, their rewordings, general."""
    facts = [json.loads(line) for line in (ROOT / "examples" / "acme_kb.jsonl").read_text().splitlines()
             if line.strip()][:n_corrections]
    general = json.loads((ROOT / "retrain" / "gates" / "general" / "questions.json").read_text())
    return {"learned": [(f["question"], f["key_facts"]) for f in facts],
            "rewordings": [(p, f["key_facts"]) for f in facts for p in f["paraphrases"][:n_rewordings]],
            "general": [(g["question"], g["key_facts"]) for g in general]}


def latest_adapter(data_dir: Path) -> Path:
    adapters = sorted((data_dir / "models" / "adapters").glob("*/adapter_model.safetensors"),
                      key=lambda p: p.stat().st_mtime)
    if not adapters:
        raise SystemExit(f"no trained adapter under {data_dir}/models/adapters: run bench/loop.py first "
                         "or pass --adapter DIR")
    return adapters[0].parent  # the first round's


def transformers_answers(settings, spec, prompts: list[list[dict]]) -> list[str]:
    from types import SimpleNamespace

    from engine.transformers_engine import TransformersEngine
    from engine.protocol import SamplingParams

    engine = TransformersEngine(settings.model_copy(update={"serving_backend": "transformers"}), lambda _v: spec)
    version = SimpleNamespace(id=spec.id, name=spec.id, adapter_path=str(spec.adapter_dir), hosted_model=None)
    engine.swap(version)
    params = SamplingParams(max_tokens=MAX_TOKENS, repetition_ngram=0)
    try:
        return [engine.generate(version, messages, params).text.strip() for messages in prompts]
    finally:
        engine.close()


class LlamaArtifact:
    """One artifact in llama.cpp (high-level API, mmap on), asked greedily with no penalties."""

    def __init__(self, model_path: Path, adapter_path: Path | None = None, kv_cache: str = "f16"):
        import llama_cpp

        started = time.perf_counter()
        kv = {} if kv_cache == "f16" else {"flash_attn": True}  # "f16 flash": the same cache, flash attention
        if kv_cache == "q8_0":
            kv.update(type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0)
        self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, n_threads=2, verbose=False, **kv)
        self.load_s = time.perf_counter() - started
        self.adapter_load_s = None
        if adapter_path is not None:
            started = time.perf_counter()
            adapter = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(adapter_path).encode())
            if not adapter:
                raise RuntimeError(f"llama.cpp could not load the adapter {adapter_path}")
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                raise RuntimeError("llama.cpp could not set the adapter")
            self.adapter_load_s = time.perf_counter() - started

    def answers(self, tokenizer, prompts: list[list[dict]]) -> tuple[list[str], float]:
        """(answers, decode tokens/s over all of them, prompt evaluation included)."""
        texts, tokens, seconds = [], 0, 0.0
        for messages in prompts:
            self.llm.reset()
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            started = time.perf_counter()
            out = self.llm.create_completion(ids, max_tokens=MAX_TOKENS, temperature=0.0, repeat_penalty=1.0,
                                             stop=["<|im_end|>"])
            seconds += time.perf_counter() - started
            tokens += out["usage"]["completion_tokens"]
            texts.append(out["choices"][0]["text"].strip())
        return texts, tokens / seconds

    def close(self) -> None:
        self.llm.close()


def score(answers: list[str], reference: list[str], sets: dict, kinds: list[str]) -> dict:
    from retrain.gates.matching import missing_key_facts

    result, start = {"same_as_transformers": sum(a == r for a, r in zip(answers, reference)) / len(reference)}, 0
    for kind in kinds:
        items = sets[kind]
        part = answers[start:start + len(items)]
        result[kind] = sum(not missing_key_facts(a, facts) for a, (_q, facts) in zip(part, items)) / len(items)
        start += len(items)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/loopdata"), help="a bench/loop.py data directory")
    parser.add_argument("--adapter", type=Path, help="the adapter to measure (default: round 1 of --data-dir)")
    parser.add_argument("--corrections", type=int, default=40, help="facts of examples/acme_kb.jsonl it was trained on")
    parser.add_argument("--rewordings", type=int, default=1, help="held-out rewordings asked per fact (at most 3)")
    args = parser.parse_args()

    import torch

    from engine.chat_tokenizer import ChatTokenizer
    from engine.gguf_files import write_gguf
    from engine.gguf_lora import write_lora_gguf
    from engine.modelstore import bundled_gguf_path
    from engine.protocol import VersionSpec
    from engine.transformers_model import LoadedModel
    from tuneloop.core.settings import Settings

    torch.set_num_threads(2)
    settings = Settings(data_dir=args.data_dir)
    base_dir = args.data_dir / "models" / "base" / "smollm2-135m-instruct"
    adapter_dir = args.adapter or latest_adapter(args.data_dir)
    spec = VersionSpec("measured", base_dir, adapter_dir)
    sets = question_sets(args.corrections, args.rewordings)
    kinds = list(sets)
    system = {"role": "system", "content": settings.resolved_system_prompt}
    prompts = [[system, {"role": "user", "content": q}] for kind in kinds for q, _facts in sets[kind]]
    print(f"adapter {adapter_dir}: {len(prompts)} questions", flush=True)

    reference = transformers_answers(settings, spec, prompts)
    rows = [{"artifact": "transformers float32 (reference)", **score(reference, reference, sets, kinds)}]
    tokenizer = ChatTokenizer(base_dir)
    work = Path(tempfile.mkdtemp(prefix="gguf-artifact-"))
    loaded = LoadedModel.load(spec, device="cpu", dtype="float32")
    candidates = []
    for quantization in ("Q8_0", "Q4_1", "F16"):
        started = time.perf_counter()
        path = write_gguf(loaded.model, loaded.tokenizer, work / f"merged-{quantization}.gguf",
                          quantization=quantization)
        candidates.append((f"merged {quantization}", path, None, "f16", time.perf_counter() - started))
    started = time.perf_counter()
    adapter_gguf = write_lora_gguf(adapter_dir, base_dir, work / "adapter-F16.gguf", dtype="F16")
    candidates.append(("bundled Q4_1 base + adapter F16", bundled_gguf_path(), adapter_gguf, "f16",
                       time.perf_counter() - started))
    merged_q8 = candidates[0]
    # the KV cache a serving context keeps (TUNELOOP_LLAMACPP_KV_CACHE_TYPE); q8_0 needs flash attention
    for kv_cache, name in (("f16 flash", "merged Q8_0, flash attention"),
                           ("q8_0", "merged Q8_0, KV cache q8_0 + flash attention")):
        candidates.append((name, merged_q8[1], None, kv_cache, merged_q8[4]))
    del loaded

    for name, path, adapter, kv_cache, write_s in candidates:
        print(f"{name} ...", flush=True)
        artifact = LlamaArtifact(path, adapter, kv_cache)
        answers, tok_s = artifact.answers(tokenizer, prompts)
        artifact.close()
        size = (adapter or path).stat().st_size / 1e6
        rows.append({"artifact": name, "write_s": write_s, "file_mb": size, "load_s": artifact.load_s,
                     "adapter_load_s": artifact.adapter_load_s, "tok_s": tok_s,
                     **score(answers, reference, sets, kinds)})
        print(rows[-1], flush=True)

    report(rows, sets, adapter_dir)


def report(rows: list[dict], sets: dict, adapter_dir: Path) -> None:
    info = machine()
    merged_q8 = next(r for r in rows if r["artifact"] == "merged Q8_0")
    lines = [
        "## Which GGUF a version is (`bench/gguf_artifact.py`)", "",
        f"Measured {info['date']} on {info['cores']} CPU cores, SmolLM2-135M-Instruct with the round-1 adapter of "
        f"`bench/loop.py` ({adapter_dir.name}), greedy, {MAX_TOKENS} tokens at most, llama.cpp on 2 threads. "
        f"Questions: the {len(sets['learned'])} corrections' own questions (learned), their "
        f"{len(sets['rewordings'])} held-out rewordings, {len(sets['general'])} general questions. "
        "\"Same text\" is the share of answers identical to transformers on the same adapter in float32 "
        "(the weights the learned check passed); load is a fresh model and context, or for the adapter "
        "its load onto a base already loaded (a hot swap); speed ratios are against merged Q8_0 in this run.", "",
        "| artifact | write (s) | file (MB) | load (s) | decode tok/s | vs merged Q8_0 | same text | learned | "
        "rewordings | general |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "tok_s" not in r:
            lines.append(f"| {r['artifact']} | — | — | — | — | — | 100% | {r['learned']:.0%} | {r['rewordings']:.0%} | "
                         f"{r['general']:.0%} |")
            continue
        load = r["adapter_load_s"] if r["adapter_load_s"] is not None else r["load_s"]
        lines.append(f"| {r['artifact']} | {r['write_s']:.1f} | {r['file_mb']:.0f} | {load:.2f} | {r['tok_s']:.1f} | "
                     f"{r['tok_s'] / merged_q8['tok_s']:.2f}× | {r['same_as_transformers']:.0%} | {r['learned']:.0%} | "
                     f"{r['rewordings']:.0%} | {r['general']:.0%} |")
    write_section("gguf_artifact", "\n".join(lines), {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
