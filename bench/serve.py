"""Serving benchmark: time to first token and tokens/s through the official openai client against a
running tuneloop server, for 1, 4, 8 and 16 concurrent chats, compared in the same run with a plain
transformers `generate` loop and (when llama-cpp-python is installed in this environment) llama.cpp
on the same SmolLM2 GGUF. Then, under 8 concurrent streams, production is promoted to another version
and back, and the requests that failed are counted (the goal: none).

    python bench/serve.py [--max-tokens 64] [--data-dir .bench-data]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, start_server, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "How long do I have to return an item?", "Do you ship to Canada?", "What are your opening hours?",
    "How do I reset my password?", "Can I pay with PayPal?", "How long does shipping take?",
    "Do you have a student discount?", "How do I track my order?", "Can I cancel my order?",
    "What is the warranty on tents?", "Do you rent camping gear?", "Can I change my address?",
    "What is your phone number?", "Do gift cards expire?", "Do you price match?", "Where is your store?",
]


def seed_memory(env: dict[str, str]) -> int:
    """Approved corrections for correction memory to search on every turn: the general gate questions,
    which none of QUESTIONS is about (so no reply is a verified one and every answer is decoded).
    A benchmark shortcut: the rows are written as approved, without the two-person review."""
    import json

    from feedback.corrections.models import CorrectionStatus
    from feedback.corrections.service import create_correction
    from tuneloop.app import prepare_database
    from tuneloop.core.db import session_scope
    from tuneloop.core.settings import Settings

    facts = json.loads((ROOT / "retrain" / "gates" / "general" / "questions.json").read_text())
    settings = Settings(data_dir=env["TUNELOOP_DATA_DIR"], database_url=env["TUNELOOP_DATABASE_URL"],
                        admin_password=env["TUNELOOP_ADMIN_PASSWORD"])
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        for fact in facts:
            create_correction(session, settings, actor="bench", question=fact["question"], answer=fact["answer"],
                              status=CorrectionStatus.approved)
    engine.dispose()
    return len(facts)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def idle_cpu_share(pid: int, seconds: float = 10.0) -> float:
    """Share of one core the server uses while nobody chats (after it settled)."""
    time.sleep(3)
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


LONG_PROMPT = " ".join(["My order history: order 1042 was two tents, order 1043 a stove and a lantern, "
                        "order 1044 rope, a compass and a kettle."] * 44) + " Which of these can I still return?"


def one_stream(client, question: str, max_tokens: int, out: list) -> None:
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    out.append({"ttft": first or total, "tokens": tokens, "seconds": total})


def bench_server(url: str, pid: int, max_tokens: int) -> list[dict]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    idle = idle_cpu_share(pid)
    one_stream(client, "hello", 8, [])  # warm-up
    rows = []
    for concurrency in (1, 4, 8, 16):
        results: list[dict] = []
        threads = [threading.Thread(target=one_stream, args=(client, QUESTIONS[i % len(QUESTIONS)], max_tokens, results))
                   for i in range(concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        ttfts = sorted(r["ttft"] for r in results)
        rows.append({
            "concurrency": concurrency,
            "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
            "per_stream_tok_s": statistics.mean(r["tokens"] / r["seconds"] for r in results),
            "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
            "rss_mb": rss_mb(pid),
        })
        print(rows[-1], flush=True)
    long_prompt = []
    one_stream(client, LONG_PROMPT, 8, long_prompt)  # ~1,800 tokens: what a pasted order history costs in memory
    rows[-1]["idle_cpu_share"], rows[-1]["rss_after_long_prompt_mb"] = idle, rss_mb(pid)
    print({"idle_cpu_share": idle, "rss_after_long_prompt_mb": rows[-1]["rss_after_long_prompt_mb"],
           "long_prompt_seconds": long_prompt[0]["seconds"]}, flush=True)
    return rows


def bench_swap(url: str, database_url: str, max_tokens: int, rounds: int = 4, clients: int = 8) -> dict:
    """``clients`` chats ask ``rounds`` questions each, one after another (every other client streaming,
    the rest not), while production moves to another version (the same base weights under a new id: a
    full load and swap) and back. A request fails if it raises or ends without usage; the fingerprints
    say which versions answered."""
    from openai import OpenAI
    from sqlmodel import Session, select

    from registry import versions
    from registry.models import ModelVersion
    from tuneloop.core.db import make_engine, session_scope

    db = make_engine(database_url)
    with session_scope(db) as session:
        v0 = versions.production_version(session)
        number = max(v.number for v in session.exec(select(ModelVersion))) + 1
        other = ModelVersion(id=f"v{number}", number=number, name=f"{v0.name}-swap-bench", base_model=v0.base_model)
        session.add(other)
    client = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    failed, answered_by = [], []

    def ask(worker: int) -> None:
        for i in range(rounds):
            messages = [{"role": "user", "content": QUESTIONS[(worker + i) % len(QUESTIONS)]}]
            try:
                if worker % 2:  # not streamed: one complete response
                    reply = client.chat.completions.create(model="tuneloop", messages=messages,
                                                           max_tokens=max_tokens, temperature=0)
                    if reply.usage is None or not reply.choices:
                        raise RuntimeError("a response without usage or choices")
                    answered_by.append(reply.system_fingerprint)
                    continue
                stream = client.chat.completions.create(
                    model="tuneloop", messages=messages,
                    max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
                chunks = list(stream)
                if not chunks or chunks[-1].usage is None:
                    raise RuntimeError("the stream ended without usage")
                answered_by.append(chunks[-1].system_fingerprint)
            except Exception as exc:  # noqa: BLE001  (counted, not raised: the figure is how many)
                failed.append(repr(exc))

    def promote(version_id: str) -> None:
        with Session(db) as session:
            versions.set_production(session, version_id, actor="bench")
            session.commit()

    threads = [threading.Thread(target=ask, args=(w,)) for w in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(1.0)
    promote(other.id)
    while f"fp_tuneloop_{other.id}" not in answered_by and any(t.is_alive() for t in threads):
        time.sleep(0.2)  # until the new version answers (the server polls the pointer), then roll back
    promote(v0.id)
    for t in threads:
        t.join()
    seen = {fp: answered_by.count(fp) for fp in sorted(set(answered_by))}
    result = {"requests": clients * rounds, "clients": clients, "failed": len(failed), "errors": failed[:3],
              "answered_by": seen, "seconds": time.perf_counter() - started}
    print(f"swap under {clients} chats:", result, flush=True)
    return result


def bench_transformers(model_dir: Path, max_tokens: int) -> float:
    """Baseline: the plain transformers generate loop, one chat at a time, same dtype as the server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    tokens, seconds = 0, 0.0
    for question in QUESTIONS[:4]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        seconds += time.perf_counter() - start
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / seconds


def bench_llama_cpp(max_tokens: int) -> float | None:
    """Bare llama-cpp-python on the same GGUF, with the weights in plain CPU buffers as the engine keeps
    them (``llamacpp_extra_buffers`` off: on an AMX Xeon VM the repacked layout crashed llama.cpp)."""
    try:
        from llama_cpp import Llama
        from llama_cpp import llama_cpp as bindings
    except ImportError:
        return None
    from engine.modelstore import bundled_gguf_path

    default_params = bindings.llama_model_default_params

    def plain_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = plain_buffers  # Llama() has no argument for it
    llm = Llama(model_path=str(bundled_gguf_path()), n_ctx=2048, n_threads=2, verbose=False)
    tokens, seconds = 0, 0.0
    for question in QUESTIONS[:4]:
        start = time.perf_counter()
        out = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0)
        seconds += time.perf_counter() - start
        tokens += out["usage"]["completion_tokens"]
    return tokens / seconds


def plot(rows: list[dict], baselines: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["concurrency"] for r in rows]
    ax.plot(xs, [r["aggregate_tok_s"] for r in rows], marker="o", label="tuneloop aggregate")
    ax.plot(xs, [r["per_stream_tok_s"] for r in rows], marker="o", label="tuneloop per stream")
    for name, value in baselines.items():
        if value:
            ax.axhline(value, linestyle="--", label=f"{name} (1 stream)")
    ax.set_xlabel("concurrent chats")
    ax.set_ylabel("tokens/s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def promotion_load(args) -> None:
    """Issue 26's figure: many concurrent chats, mixed streaming and not, while production is promoted
    and rolled back; 0 failed requests is the goal."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TUNELOOP_DATA_DIR": args.data_dir, "TUNELOOP_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
               "TUNELOOP_ADMIN_PASSWORD": "bench-admin", "TUNELOOP_ENGINE": "llamacpp",
               "TUNELOOP_RATE_LIMIT_PER_MINUTE": "0"}
        seed_memory(env)
        proc, url = start_server(env)
        try:
            swap = bench_swap(url, env["TUNELOOP_DATABASE_URL"], args.max_tokens, rounds=1,
                              clients=args.promotion_load)
        finally:
            proc.terminate()
            proc.wait(30)
    m = machine()
    text = "\n".join([
        "## Load through a promotion (`bench/serve.py --promotion-load`)", "",
        f"Measured {m['date']} on {m['cores']} CPU cores, llama.cpp, SmolLM2-135M-Instruct, {args.max_tokens} new tokens: "
        f"{swap['clients']} concurrent chats through the official openai client (half streamed, half not), while "
        "production was promoted to another version (a full load and swap) and rolled back as soon as the new one "
        f"answered. **{swap['failed']} of {swap['requests']} requests failed** (goal 0); answered by "
        + ", ".join(f"{fp.removeprefix('fp_tuneloop_')} {n}" for fp, n in swap["answered_by"].items())
        + f"; all answered in {swap['seconds']:.0f} s."
        + (f" First errors: {swap['errors']}" if swap["errors"] else ""),
    ])
    write_section("serve-promotion", text, {"machine": m, "swap": swap})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--data-dir", default=str(ROOT / ".bench-data"),
                        help="kept between runs so the model is converted once")
    parser.add_argument("--engines", default="llamacpp,transformers", help="tuneloop engines to measure")
    parser.add_argument("--promotion-load", type=int, metavar="CHATS",
                        help="only: CHATS concurrent chats (half streamed) through a promotion and a rollback on "
                             "llama.cpp; writes the serve-promotion section")
    args = parser.parse_args()
    if args.promotion_load:
        return promotion_load(args)
    results: dict[str, list[dict]] = {}
    swaps: dict[str, dict] = {}
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"TUNELOOP_DATA_DIR": args.data_dir, "TUNELOOP_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                   "TUNELOOP_ADMIN_PASSWORD": "bench-admin", "TUNELOOP_MEMORY_ENABLED": "true",
                   "TUNELOOP_ENGINE": engine, "TUNELOOP_RATE_LIMIT_PER_MINUTE": "0"}
            seeded = seed_memory(env)
            proc, url = start_server(env)
            try:
                results[engine] = bench_server(url, proc.pid, args.max_tokens)
                swaps[engine] = bench_swap(url, env["TUNELOOP_DATABASE_URL"], args.max_tokens)
            finally:
                proc.terminate()
                proc.wait(30)
        print(engine, results[engine], flush=True)
    model_dir = Path(args.data_dir) / "models" / "base" / "smollm2-135m-instruct"
    baselines = {"transformers generate": bench_transformers(model_dir, args.max_tokens),
                 "llama.cpp": bench_llama_cpp(args.max_tokens)}
    print(baselines)
    main_engine = next(iter(results))
    plot(results[main_engine], baselines, ROOT / "docs" / "img" / "serve.png")
    hf, lcpp = baselines["transformers generate"], baselines["llama.cpp"]
    lines = [
        "## Serving (`bench/serve.py`)", "",
        f"Measured {machine()['date']} on {machine()['cores']} cores, torch {machine()['torch']}, "
        f"transformers {machine()['transformers']}; SmolLM2-135M-Instruct, greedy, {args.max_tokens} new tokens, "
        "official openai client streaming against `tuneloop serve` (correction memory on, searching "
        f"{seeded} approved corrections on every turn, none of them about the questions asked), each engine in turn, "
        "then the baselines, all in one run.", "",
    ]
    for engine, rows in results.items():
        single = rows[0]["per_stream_tok_s"]
        at8 = next(r for r in rows if r["concurrency"] == 8)
        lines += [
            f"### engine: {engine}", "",
            "| concurrent chats | TTFT p50 (s) | TTFT p95 (s) | tok/s per stream | tok/s aggregate | server RSS (MB) |",
            "|---|---|---|---|---|---|",
            *[f"| {r['concurrency']} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['per_stream_tok_s']:.1f} | "
              f"{r['aggregate_tok_s']:.1f} | {r['rss_mb']:.0f} |" for r in rows],
            "",
            f"Ratios: one chat vs transformers generate {single / hf:.2f}x"
            + (f"; one chat vs bare llama.cpp {single / lcpp:.2f}x (goal ≥ 0.9x)" if lcpp else "")
            + f"; 8 chats aggregate vs one chat {at8['aggregate_tok_s'] / single:.2f}x (goal ≥ 2x); "
              f"TTFT p50 at 8 chats {at8['ttft_p50']:.2f} s (goal ≤ 1 s); RSS {max(r['rss_mb'] for r in rows):.0f} MB "
              "(goal ≤ 500 MB); "
              f"after one ~1,800-token prompt {rows[-1]['rss_after_long_prompt_mb']:.0f} MB; "
              f"idle (nobody chatting) {rows[-1]['idle_cpu_share']:.1%} of one core.", "",
            f"Promotion and rollback under 8 concurrent streams: {swaps[engine]['failed']} of "
            f"{swaps[engine]['requests']} requests failed (goal 0); answered by "
            + ", ".join(f"{fp.removeprefix('fp_tuneloop_')} {n}" for fp, n in swaps[engine]["answered_by"].items())
            + ".", "",
        ]
    lines += [
        f"Baselines in the same run (one stream): transformers `generate` {hf:.1f} tok/s; "
        + (f"bare llama-cpp-python on the bundled Q4_1 GGUF {lcpp:.1f} tok/s." if lcpp else "llama.cpp not installed."),
        "", "![serving throughput](img/serve.png)",
    ]
    write_section("serve", "\n".join(lines), {"machine": machine(), "engines": results, "swaps": swaps, "baselines": baselines})


if __name__ == "__main__":
    main()
