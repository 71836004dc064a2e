"""Answer selection on three knowledge bases nobody tuned it on: fit the defaults, report each KB.

For each knowledge base (examples/acme_kb.jsonl, telecom_kb.jsonl, saas_kb.jsonl) the first 40 facts
are approved corrections (their question only), as after the loop's round 1; the served model is
the bundled SmolLM2 through llama.cpp. Every question below goes through ``CorrectionMemory``'s
candidates as a chat turn does (retrieval, then the served weights scoring each candidate answer):

* **fit** rows: the 2 customer wordings of each corrected fact (positives), the customer wordings of
  the 20 facts not yet corrected and the even lines of the KB's off-topic file (uncovered questions);
* **held-out** rows: the 3 paraphrases of each corrected fact (the loop's rewordings), the paraphrases
  of the uncovered facts and the odd off-topic lines; plus bench/general_questions.json (general
  questions: the model should answer those alone, never hand them off).

The selector is fitted leave-one-KB-out (on the other two KBs' fit rows) and judged on the third's
held-out rows: the honest figure for a company nobody tuned it on. The defaults shipped in
``feedback.memory.selection`` are the fit on all three. Rows are cached in
bench/results/selection_rows.json (``--refit`` re-fits without the model).

With ``--latency`` it measures instead what selection adds to a turn's time to first token: two
``tuneloop serve`` processes over one database holding the first 40 facts of the acme KB, one with
answer scoring on and one with it off (retrieval alone), each asked the 120 held-out rewordings one at
a time through the official openai client, streaming.

    python bench/selection.py [--refit] [--kb examples/acme_kb.jsonl ...]
    python bench/selection.py --latency
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT, machine, write_section  # noqa: E402

KBS = [ROOT / "examples" / f"{name}_kb.jsonl" for name in ("acme", "telecom", "saas")]
ROUND1 = 40
ROWS = RESULTS / "selection_rows.json"
PROBABILITIES = [round(0.05 * i, 2) for i in range(4, 20)]
TOPIC_THRESHOLDS = [round(-0.3 + 0.025 * i, 3) for i in range(25)]
CLARIFY_PROBABILITIES = [round(0.05 * i, 2) for i in range(1, 19)]
# A clarifying question ("Do you mean ...?") should offer the customer's own question at least this often,
# averaged over the KBs' shop questions: asked back wrongly more often, customers stop trusting it.
CLARIFY_RIGHT_SHARE = 2 / 3
CHOICE_PROBABILITIES = [round(0.025 * i, 3) for i in range(0, 16)]
# A numbered list of plausible questions is offered from the highest probability that keeps the customers'
# questions answered within this share of the best any list threshold reaches (averaged over the KBs):
# lower thresholds list uncovered questions back too, each costing its customer a turn before the handoff.
# 0: a 2-point slack (0.05) cost 3-8 of each KB's 120 held-out rewordings; a list states no fact, a missed
# question costs its customer a wait for staff.
CHOICE_SLACK = 0.0
CHOICES = 3


def load_kb(path: Path) -> tuple[list[dict], list[str]]:
    facts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    offtopic_file = path.with_name(path.name.replace("_kb.jsonl", "_offtopic.txt"))
    offtopic = [line.strip() for line in offtopic_file.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return facts, offtopic


def collect(path: Path, general: list[str], data_dir: Path, fit_only: bool = False) -> dict:
    """Candidates with retrieval and model scores for every question of one KB (the slow part)."""
    from bench.memory import real_model_dir
    from bot.runtime import ServingRuntime
    from feedback.corrections.service import create_correction
    from feedback.memory.calibration import LabelledQuestion, candidate_rows
    from feedback.memory.service import CorrectionMemory
    from tuneloop.app import prepare_database
    from tuneloop.core.db import session_scope
    from tuneloop.core.settings import Settings

    facts, offtopic = load_kb(path)
    settings = Settings(data_dir=data_dir, admin_password="bench-password", base_model=str(real_model_dir()),
                        allow_self_approval=True)
    db = prepare_database(settings)
    ids = {}
    with session_scope(db) as session:
        for fact in facts[:ROUND1]:
            ids[fact["id"]] = create_correction(session, settings, actor="bench", question=fact["question"],
                                                answer=fact["answer"], status="approved").id
    runtime = ServingRuntime(settings, db)
    runtime.start(background=False)
    memory, scorer = CorrectionMemory(settings, db), runtime.answer_scorer()
    corrected, uncovered = facts[:ROUND1], facts[ROUND1:]
    sets = {
        "fit_positive": [(w, ids[f["id"]]) for f in corrected for w in f["customer_wordings"]],
        "fit_uncovered": [(w, None) for f in uncovered for w in f["customer_wordings"]] +
                         [(q, None) for q in offtopic[0::2]],
        "reworded": [(p, ids[f["id"]]) for f in corrected for p in f["paraphrases"]],
        "exact": [(f["question"], ids[f["id"]]) for f in corrected],
        "uncovered": [(p, None) for f in uncovered for p in f["paraphrases"]] + [(q, None) for q in offtopic[1::2]],
        "general": [(q, None) for q in general],
    }
    if fit_only:  # the held-out sets are what bench/loop.py measures end to end
        sets = {k: v for k, v in sets.items() if k in ("fit_positive", "fit_uncovered", "general")}
    out, started = {}, time.perf_counter()
    try:
        for name, questions in sets.items():
            labelled = [LabelledQuestion(text, cid) for text, cid in questions]
            # general questions need only retrieval (the topic decision); the rest are scored by the model
            scored = candidate_rows(memory, labelled, None if name == "general" else scorer,
                                    settings.memory_candidates)
            rows = [{"text": q.text, "expected": q.correction_id, "by_model": by_model,
                     "topic": memory.topic_score(q.text),
                     "candidates": [{**c.__dict__, "right": right} for c, right in candidates]}
                    for q, (candidates, by_model) in zip(labelled, scored)]
            out[name] = rows
            print(f"  {path.stem} {name}: {len(rows)} questions ({time.perf_counter() - started:.0f}s)", flush=True)
    finally:
        runtime.stop()
        db.dispose()
    out["ms_per_question"] = 1000 * (time.perf_counter() - started) / sum(
        len(v) for k, v in sets.items() if k != "general")  # general questions are not scored (topic only)
    return out


def _candidates(row: dict):
    from feedback.memory.selection import Candidate

    return [(Candidate(**{k: v for k, v in c.items() if k != "right"}), c["right"]) for c in row["candidates"]]


def fit_on(kbs: list[dict]):
    from feedback.memory.selection import FEATURES, RETRIEVAL_FEATURES, SelectorPair, fit

    rows = [pair for kb in kbs for name in ("fit_positive", "fit_uncovered") for row in kb[name]
            for pair in _candidates(row)]
    return SelectorPair(fit(rows, FEATURES), fit(rows, RETRIEVAL_FEATURES))


def judge(pair, kb: dict, probability: float, topic: float, *, clarify: float | None = None,
          choice: float | None = None, scored: bool = True) -> dict:
    """Outcomes of the held-out questions of one KB, as ``CorrectionMemory.decide`` would give them
    (``scored``: with the model's scores where the row has them, else retrieval alone; ``clarify``:
    the probability from which a clarifying question offers the best candidate, None: never;
    ``choice``: the probability from which a question about the company gets up to ``CHOICES``
    candidates listed, None: never). A list is right when it holds the customer's question."""
    result = {}
    for name in ("exact", "reworded", "uncovered", "general", "fit_positive", "fit_uncovered"):
        if name not in kb:
            continue
        counts = {"n": len(kb[name]), "verified_right": 0, "verified_wrong": 0, "clarify_right": 0,
                  "clarify_wrong": 0, "choices_right": 0, "choices_wrong": 0, "handoff": 0, "none": 0}
        for row in kb[name]:
            selector = pair.for_scored(scored and row["by_model"])
            ranked = sorted(((selector.probability(c), r) for c, r in _candidates(row)), key=lambda x: -x[0])
            chance, right = ranked[0] if ranked else (0.0, False)
            listed = [r for p, r in ranked[:CHOICES] if choice is not None and p >= choice]
            if chance >= probability:
                counts["verified_right" if right else "verified_wrong"] += 1
            elif clarify is not None and chance >= clarify and row["topic"] >= topic:
                counts["clarify_right" if right else "clarify_wrong"] += 1
            elif row["topic"] < topic:
                counts["none"] += 1
            elif listed and clarify is not None:
                counts["choices_right" if any(listed) else "choices_wrong"] += 1
            else:
                counts["handoff"] += 1
        result[name] = counts
    return result


def right_in_all(counts: dict) -> int:
    """Questions whose customer gets the right approved answer: at once, after a yes, or after a pick."""
    return counts["verified_right"] + counts["clarify_right"] + counts["choices_right"]


def sets_of(kb: dict) -> tuple[str, str]:
    """The shop questions judged: the held-out ones when collected, else the fit sets (each KB's are
    held out of its leave-one-KB-out selector all the same)."""
    return ("reworded", "uncovered") if "reworded" in kb else ("fit_positive", "fit_uncovered")


def choose_clarify(kbs: dict[str, dict], selectors: dict, probability: float) -> float:
    """The lowest probability (below ``probability``) at which, averaged over the KBs, the clarifying
    questions asked about shop questions offer the customer's own question at least ``CLARIFY_RIGHT_SHARE``
    of the time (leave-one-out selectors): lower, more rewordings get their answer after a yes, and more
    customers are asked about a question that is not theirs."""
    def right_share(p: float) -> float:
        shares = []
        for name, kb in kbs.items():
            j = judge(selectors[name], kb, probability, -1.0, clarify=p)
            asked = sum(j[s]["clarify_right"] + j[s]["clarify_wrong"] for s in sets_of(kb))
            shares.append(sum(j[s]["clarify_right"] for s in sets_of(kb)) / asked if asked else 1.0)
        return sum(shares) / len(shares)

    return next((p for p in CLARIFY_PROBABILITIES if p < probability and right_share(p) >= CLARIFY_RIGHT_SHARE),
                probability)


def choose_choice(kbs: dict[str, dict], selectors: dict, probability: float, clarify: float, topic: float) -> float:
    """The highest probability (below ``clarify``) from which a numbered list of candidates keeps the
    share of customers' questions answered right, averaged over the KBs, within ``CHOICE_SLACK`` of the
    best any list threshold reaches: every lower threshold lists more uncovered questions back for
    little gain."""
    def right_share(p: float) -> float:
        shares = []
        for name, kb in kbs.items():
            pos = judge(selectors[name], kb, probability, topic, clarify=clarify, choice=p)[sets_of(kb)[0]]
            shares.append(right_in_all(pos) / pos["n"])
        return sum(shares) / len(shares)

    grid = [p for p in CHOICE_PROBABILITIES if p < clarify]
    shares = {p: right_share(p) for p in grid}
    best = max(shares.values())
    return max(p for p in grid if shares[p] >= best - CHOICE_SLACK)


def choose(kbs: dict[str, dict], selectors: dict, wrong_budget: float = 0.01) -> tuple[float, float]:
    """The lowest probability whose verified-wrong share stays within ``wrong_budget`` of the held-out
    shop questions on every KB (leave-one-out selectors), and the topic threshold that best separates
    uncovered shop questions (handoff) from general ones (the model alone), averaged over the KBs."""
    def wrong_share(p: float) -> float:
        worst = 0.0
        for name, kb in kbs.items():
            j = judge(selectors[name], kb, p, -1.0)
            pos, unc = sets_of(kb)
            shop = j[pos]["n"] + j[unc]["n"]
            worst = max(worst, (j[pos]["verified_wrong"] + j[unc]["verified_wrong"]) / shop)
        return worst

    probability = next((p for p in PROBABILITIES if wrong_share(p) <= wrong_budget), PROBABILITIES[-1])

    def separation(t: float) -> float:
        total = 0.0
        for name, kb in kbs.items():
            j = judge(selectors[name], kb, 1.01, t)
            unc = sets_of(kb)[1]
            total += j[unc]["handoff"] / j[unc]["n"] + j["general"]["none"] / j["general"]["n"]
        return total

    topic = max(TOPIC_THRESHOLDS, key=separation)
    return probability, topic


def report(kbs: dict[str, dict], selectors: dict, final, probability: float, topic: float,
           clarify: float, choice: float, collected: str) -> tuple[str, dict]:
    pct = lambda a, b: f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"  # noqa: E731
    figures, lines = {}, []
    for name, kb in kbs.items():
        j = judge(selectors[name], kb, probability, topic, clarify=clarify, choice=choice)
        r = judge(selectors[name], kb, probability, topic, clarify=clarify, choice=choice, scored=False)
        single = judge(selectors[name], kb, probability, topic, clarify=clarify)
        figures[name] = {"with_model": j, "retrieval_only": r, "without_lists": single,
                         "ms_per_question": kb["ms_per_question"]}
        pos, unc = sets_of(kb)
        for label, res in (("served model + retrieval", j), ("retrieval alone", r),
                           ("served model + retrieval, no lists", single)):
            exact = pct(res["exact"]["verified_right"], res["exact"]["n"]) if "exact" in res else "—"
            lines.append(
                f"| {name} | {label} | {exact} "
                f"| {pct(res[pos]['verified_right'], res[pos]['n'])} "
                f"| {res[pos]['verified_wrong']} "
                f"| {pct(res[pos]['clarify_right'], res[pos]['n'])} | {res[pos]['clarify_wrong']} "
                f"| {pct(res[pos]['choices_right'], res[pos]['n'])} | {res[pos]['choices_wrong']} "
                f"| {pct(right_in_all(res[pos]), res[pos]['n'])} "
                f"| {res[pos]['handoff']} "
                f"| {pct(res[unc]['verified_wrong'], res[unc]['n'])} "
                f"| {pct(res[unc]['clarify_wrong'] + res[unc]['choices_wrong'], res[unc]['n'])} "
                f"| {pct(res[unc]['handoff'], res[unc]['n'])} "
                f"| {pct(res['general']['none'], res['general']['n'])} |")
    from tuneloop.core.settings import Settings

    defaults = Settings()
    m = machine()
    weights = ", ".join(f"{f} {w:+.2f}" for f, w in zip(final.with_model.features, final.with_model.weights))
    text = f"""## Answer selection on three knowledge bases (`bench/selection.py`)

Candidates scored {collected} on {m['cores']} CPU cores with the bundled SmolLM2-135M (base weights, llama.cpp), before
any training; selectors fitted and judged {m['date']}: the first {ROUND1} facts of each KB are approved corrections (question only). Each KB's selector was fitted on
the *other two* KBs (customer wordings as positives, uncovered questions as negatives) and judged on this KB's
questions, none of which it saw: {"the 2 customer wordings per corrected fact (reworded), the customer wordings of the 20 facts not yet corrected and the even lines of the off-topic file (uncovered)" if "reworded" not in next(iter(kbs.values())) else "rewordings are the 3 paraphrases per corrected fact; uncovered shop questions are the paraphrases of the 20 facts not yet corrected and the odd lines of the off-topic file"}
(a verified reply to an uncovered one is wrong; the right outcome is a handoff); general questions are
bench/general_questions.json (the right outcome is the model alone). The held-out paraphrases are measured end to end,
after training too, by `bench/loop.py` (below). Settings chosen
on all three: verified at probability ≥ **{probability}**; a clarifying question ("Do you mean ...?", answered yes by a
customer whose question it is, no otherwise) at probability ≥ **{clarify}** (the lowest at which, averaged over the KBs,
at least {CLARIFY_RIGHT_SHARE:.0%} of the questions asked back offer the customer's own question); about the company
(handoff) at topic margin ≥ **{topic}** (`feedback.memory.topic`); below the clarifying probability, a question about
the company gets up to {CHOICES} approved questions listed, numbered, that have probability ≥ **{choice}** (the highest at
which, averaged over the KBs, the rewordings answered right stay within {CHOICE_SLACK:.0%} of the best any list threshold
gives; the customer picks one by its number or says no). A clarifying question never states a fact: the wrong offers
below cost the customer a turn. The table ends each no in a handoff; the product then lists the next questions
retrieval finds, once (`memory_clarify_after_no_score`), which only `bench/loop.py` measures.

| KB | selection | exact questions verified right | rewordings verified right | rewordings verified wrong | rewordings right after a yes | rewordings offered another question (then handed off) | rewordings right after picking from a list | rewordings listed others (then handed off) | rewordings right in all | rewordings handed off | uncovered verified (wrong) | uncovered asked back (then handed off) | uncovered handed off | general left to the model |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Shipped defaults (fit on all three KBs): {weights}, bias {final.with_model.bias:+.2f}. Scoring the candidates costs
{", ".join(f"{n} {kbs[n]['ms_per_question']:.0f} ms" for n in kbs)} per question here (retrieval and {defaults.memory_candidates} candidate
answers, their first {defaults.memory_scored_answer_tokens} tokens each
through llama.cpp, neutral scores cached per version; the 2 cores were otherwise idle).
"""
    return text, figures


def latency(path: Path) -> dict:
    """Time to first token with and without answer scoring, measured in the same run (see the docstring)."""
    import statistics

    import httpx
    from openai import OpenAI

    from bench.common import start_server
    from bench.memory import real_model_dir
    from feedback.corrections.service import create_correction
    from tuneloop.app import prepare_database
    from tuneloop.core.db import session_scope
    from tuneloop.core.settings import Settings

    facts, _ = load_kb(path)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TUNELOOP_DATA_DIR": tmp, "TUNELOOP_BASE_MODEL": str(real_model_dir()),
               "TUNELOOP_ADMIN_PASSWORD": "bench-admin", "TUNELOOP_RATE_LIMIT_PER_MINUTE": "0",
               "TUNELOOP_LOG_LEVEL": "WARNING"}
        settings = Settings(data_dir=Path(tmp), admin_password="bench-admin", allow_self_approval=True)
        db = prepare_database(settings)
        with session_scope(db) as session:
            for fact in facts[:ROUND1]:
                create_correction(session, settings, actor="bench", question=fact["question"], answer=fact["answer"],
                                  status="approved")
        db.dispose()
        questions = [p for f in facts[:ROUND1] for p in f["paraphrases"]]
        for arm, scoring in (("retrieval alone", "false"), ("served model + retrieval", "true")):
            server, url = start_server({**env, "TUNELOOP_MEMORY_ANSWER_SCORING": scoring})
            try:
                client = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, http_client=httpx.Client(timeout=120))
                for fact in facts[:ROUND1]:  # warm: the index, and each answer's neutral score once per version
                    client.chat.completions.create(model="tuneloop", max_tokens=8, store=False,
                                                   messages=[{"role": "user", "content": fact["question"]}])
                ttft = []
                for question in questions:
                    started = time.perf_counter()
                    stream = client.chat.completions.create(model="tuneloop", max_tokens=16, stream=True, store=False,
                                                            messages=[{"role": "user", "content": question}])
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            ttft.append(time.perf_counter() - started)
                            break
                    stream.close()
                out[arm] = {"n": len(ttft), "p50_ms": 1000 * statistics.median(ttft),
                            "p90_ms": 1000 * statistics.quantiles(ttft, n=10)[-1]}
                print(f"  {arm}: {out[arm]}", flush=True)
            finally:
                server.terminate()
                server.wait(60)
    out["added_p50_ms"] = out["served model + retrieval"]["p50_ms"] - out["retrieval alone"]["p50_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kb", type=Path, action="append", help="knowledge bases (default: the three in examples/)")
    parser.add_argument("--refit", action="store_true", help="reuse the cached candidate rows; fit and report only")
    parser.add_argument("--fit-only", action="store_true",
                        help="collect the fit sets only (customer wordings, uncovered questions, general questions); "
                             "the held-out rewordings are then measured by bench/loop.py")
    parser.add_argument("--latency", action="store_true", help="time to first token with and without answer scoring")
    args = parser.parse_args()
    if args.latency:
        figures = latency(KBS[0])
        m = machine()
        text = (f"## What answer selection costs a turn (`bench/selection.py --latency`)\n\nMeasured {m['date']} on "
                f"{m['cores']} CPU cores, llama.cpp, the bundled SmolLM2, 40 approved corrections of the acme KB, the "
                "120 held-out rewordings asked one at a time, streaming: time to first token, p50 / p90.\n\n"
                "| memory decides by | p50 (ms) | p90 (ms) |\n|---|---|---|\n" +
                "".join(f"| {arm} | {f['p50_ms']:.0f} | {f['p90_ms']:.0f} |\n" for arm, f in figures.items()
                        if isinstance(f, dict)) +
                f"\nAnswer selection adds **{figures['added_p50_ms']:.0f} ms** to the p50 (target: ≤ 250 ms).")
        write_section("selection-latency", text, {"machine": m, **figures})
        return
    paths = args.kb or KBS
    collected = machine()["date"]
    if args.refit:
        kbs = json.loads(ROWS.read_text())
        previous = json.loads((RESULTS / "selection.json").read_text()) if (RESULTS / "selection.json").is_file() else {}
        collected = previous.get("collected") or previous.get("machine", {}).get("date", "at an unrecorded date")
    else:
        general = [q["question"] for q in json.loads((ROOT / "bench" / "general_questions.json").read_text())]
        with tempfile.TemporaryDirectory() as tmp:
            kbs = {p.stem.replace("_kb", ""): collect(p, general, Path(tmp) / p.stem, args.fit_only) for p in paths}
        RESULTS.mkdir(parents=True, exist_ok=True)
        ROWS.write_text(json.dumps(kbs))
    selectors = {name: fit_on([kb for other, kb in kbs.items() if other != name] or [kbs[name]]) for name in kbs}
    probability, topic = choose(kbs, selectors)
    clarify = choose_clarify(kbs, selectors, probability)
    choice = choose_choice(kbs, selectors, probability, clarify, topic)
    final = fit_on(list(kbs.values()))
    text, figures = report(kbs, selectors, final, probability, topic, clarify, choice, collected)
    write_section("selection", text, {"machine": machine(), "collected": collected, "probability": probability,
                                      "topic": topic,
                                      "clarify_probability": clarify, "choice_probability": choice,
                                      "choices": CHOICES,
                                      "defaults": {"with_model": final.with_model.as_dict(),
                                                   "retrieval_only": final.retrieval_only.as_dict()},
                                      "figures": figures})


if __name__ == "__main__":
    main()
