"""The headline benchmark: how fast and how well does a round of corrections reach production?

Drives running tuneloop processes only through their public HTTP API and the official openai client,
as users would: two API processes on one database (the customer-facing one with correction memory
on, a second one with memory off, to see what the weights alone say) and one `tuneloop worker`.

Round 1: a customer asks each canonical question of the first N facts of a knowledge base (``--kb``,
default examples/acme_kb.jsonl; telecom_kb.jsonl and saas_kb.jsonl are other trades) and gives thumbs-down; staff member alice writes the correction from the review queue; bob approves it.
Then "train now" (what the scheduler does on its tick), wait for training and gates, and promote as
the admin. Round 2 does the same with the next M facts. Measured:

* wall time from the last approval to the promoted version serving, split into snapshot, training,
  gates and swap;
* the share of held-out paraphrases (never trained on) answered with every key fact, by production
  before and after, with memory off and on, per memory outcome (verified, handoff, grounded, none);
* **wrong-fact replies**: replies to shop questions that state a key fact of a different fact of the
  KB, or a number, price, duration or contact the right answer does not contain
  (``retrain.gates.matching.wrong_facts``), per outcome;
* the KB's off-topic shop questions (no fact answers them): verified (wrong) or handed off;
* general questions (bench/general_questions.json, 126 with key facts) answered correctly, before and
  after each round;
* after round 2, the round-1 corrections still answered correctly (forgetting);
* the selector fitted for each version (``tuneloop memory calibrate --save``, before training and after
  the round) against the shipped defaults: the rewordings and the off-topic questions never logged,
  asked again (``--no-refit`` skips it).

    python bench/loop.py [--kb examples/telecom_kb.jsonl] [--round1 40] [--round2 20] [--accept-all]

Writes its section of docs/benchmarks.md (one per KB and arm), bench/results/loop-<kb>.json and
docs/img/loop-<kb>.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_offtopic, machine, start_server  # noqa: E402
from loop_report import render  # noqa: E402

sys.path.insert(0, str(ROOT))
from bot.clarify import offered_questions  # noqa: E402
from tuneloop.core.settings import Settings  # noqa: E402

SHOWN = Settings(admin_password="bench-admin")  # the clarifying replies' templates: the platform runs the defaults
GENERAL = json.loads((ROOT / "bench" / "general_questions.json").read_text())
KB: list[dict] = []  # the knowledge base of this run (--kb)
CONCURRENCY = 8
CLARIFY_TURNS = 2  # a customer answers at most a question and then a list before the reply judged


class Platform:
    """The processes of one benchmark run and the API calls users would make."""

    def __init__(self, env: dict[str, str], max_tokens: int):
        self.env, self.max_tokens = env, max_tokens
        self.cli("users", "create", "alice", "--password", "alice-password")
        self.cli("users", "create", "bob", "--password", "bobby-password")
        self.keys = {name: {"Authorization": f"Bearer {self.cli('users', 'key', 'create', name).strip()}"}
                     for name in ("admin", "alice", "bob")}
        self.server, self.url = start_server(env)  # memory on: what customers use
        self.plain, self.plain_url = start_server({**env, "TUNELOOP_MEMORY_ENABLED": "false"})
        self.worker = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "worker", "--no-scheduler"],
                                       env=self.full_env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.http = httpx.Client(timeout=600)
        self.fact_of: dict[str, str] = {}  # correction id -> the KB fact it corrects

    @property
    def full_env(self) -> dict[str, str]:
        import os

        return {**os.environ, **self.env}

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", *args], env=self.full_env,
                              capture_output=True, text=True, check=True)
        return done.stdout

    def close(self) -> None:
        for proc in (self.server, self.plain, self.worker):
            proc.terminate()
        for proc in (self.server, self.plain, self.worker):
            proc.wait(60)

    def call(self, method: str, path: str, who: str | None = None, **kw) -> dict:
        response = self.http.request(method, f"{self.url}{path}", headers=self.keys.get(who, {}), **kw)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def ask(self, question: str | list[dict], *, memory: bool, store: bool = False) -> dict:
        """One chat turn. Measurement asks with ``store: false``: a held-out rewording must never reach
        the logs that phrasing suggestions and calibration read (only ``correct``'s customers are logged)."""
        url = self.url if memory else self.plain_url
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        body = {"model": "tuneloop", "messages": messages, "max_tokens": self.max_tokens, "temperature": 0,
                "store": store}
        response = self.http.post(f"{url}/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()

    def ask_all(self, questions: list[str], *, memory: bool, store: bool = False) -> list[dict]:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(lambda q: self.ask(q, memory=memory, store=store), questions))

    def ask_as_customer(self, question: str, fact_id: str | None, *, memory: bool) -> dict:
        """Ask as a customer whose question is about ``fact_id`` (None: a fact nobody corrected): when the
        bot asks back "Do you mean ...?", the customer says yes if the question offered is about their
        fact and no otherwise; offered a numbered list, they answer the number of the question about their
        fact, or no; after a no they may be offered a list and answer it the same way. The bot's reply after
        their answers is the one judged (``clarified``: what they said)."""
        messages, said, reply = [{"role": "user", "content": question}], [], self.ask(question, memory=memory)
        while reply.get("memory_outcome") == "clarify" and len(said) < CLARIFY_TURNS:
            text = reply["choices"][0]["message"]["content"]
            # they pick only among the questions they can read: max_tokens may have cut a list short
            offered = (reply.get("memory_correction_ids") or [None])[:max(1, len(offered_questions(SHOWN, text)))]
            theirs = [i for i, cid in enumerate(offered) if fact_id is not None and self.fact_of.get(cid) == fact_id]
            said.append("no" if not theirs else "yes" if len(offered) == 1 else str(theirs[0] + 1))
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": said[-1]}]
            reply = self.ask(messages, memory=memory)
        return {**reply, "clarified": ", ".join(said)} if said else reply

    def ask_all_as_customers(self, pairs: list[tuple[str, str | None]], *, memory: bool) -> list[dict]:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(lambda p: self.ask_as_customer(p[0], p[1], memory=memory), pairs))

    def serving(self, *, memory: bool) -> str:
        return self.ask("Hello", memory=memory)["system_fingerprint"]


def correct(platform: Platform, facts: list[dict], *, phrasings: bool, accept_all: bool = False) -> dict:
    """Customers ask and dislike; alice corrects from the queue, accepting the phrasing suggestions
    correction memory finds in the logs (other customers' wordings of the same question, asked
    earlier); bob approves. Returns how many phrasings were suggested and accepted."""
    if phrasings:  # earlier customers asked the same things their own way (logged, not rated)
        platform.ask_all([w for f in facts for w in f["customer_wordings"]], memory=True, store=True)
    answers = platform.ask_all([f["question"] for f in facts], memory=True, store=True)
    for answer in answers:
        platform.call("POST", f"/v1/messages/{answer['message_id']}/rating", json={"value": "down"})
    queued: set[str] = set()
    page = {"has_more": True, "next_after": 0}
    while page["has_more"]:  # the review queue, page by page, as the staff page reads it
        page = platform.call("GET", f"/v1/review/queue?limit=100&after={page['next_after']}", "alice")
        queued |= {item["message_id"] for item in page["data"]}
    accepted = suggested = withheld = 0
    for fact, answer in zip(facts, answers):
        assert answer["message_id"] in queued, "a disliked answer is missing from the review queue"
        made = platform.call("POST", "/v1/corrections", "alice", json={
            "message_id": answer["message_id"], "answer": fact["answer"], "key_facts": fact["key_facts"]})
        platform.fact_of[made["id"]] = fact["id"]
        if phrasings:
            found = platform.call("GET", f"/v1/corrections/{made['id']}/phrasing-suggestions?sources=logs", "alice")
            # alice keeps the suggestions that ask this very question (real customer wording); the
            # benchmark's stand-in for her judgement is the KB's list of wordings of this fact
            keep = [s["text"] for s in found["data"] if accept_all or s["text"] in fact["customer_wordings"]]
            suggested, accepted = suggested + len(found["data"]), accepted + len(keep)
            withheld += len(found.get("withheld", []))
            if keep:
                platform.call("PATCH", f"/v1/corrections/{made['id']}", "alice", json={"alternative_questions": keep})
        submitted = platform.call("POST", f"/v1/corrections/{made['id']}/submit", "alice")
        try:
            platform.call("POST", f"/v1/corrections/{made['id']}/approve", "bob", json={"etag": submitted["etag"]})
        except RuntimeError as exc:  # the answer names the company's hotline: staff keep it as the company's
            if "contacts nobody decided on" not in str(exc):
                raise
            kept = platform.call("POST", f"/v1/corrections/{made['id']}/contacts", "alice", json={"action": "keep"})
            platform.call("POST", f"/v1/corrections/{made['id']}/approve", "bob", json={"etag": kept["etag"]})
    return {"suggested": suggested, "accepted": accepted, "withheld": withheld,
            "wordings": sum(len(f["customer_wordings"]) for f in facts)}


def instant_fix(platform: Platform, facts: list[dict], offtopic: list[str]) -> dict:
    """Before any training, with memory on: exact questions and held-out rewordings answered with the
    corrected fact, per outcome, with wrong-fact replies; the KB's off-topic shop questions verified
    (always wrong) or handed off (right)."""
    out = {name: judged(platform, facts, memory=True, paraphrases=paraphrases)
           for name, paraphrases in (("exact", False), ("reworded", True))}
    out["offtopic"] = offtopic_outcomes(platform, offtopic)
    return out


def offtopic_outcomes(platform: Platform, offtopic: list[str]) -> dict:
    """Shop questions no fact answers, asked as customers: verified (always wrong), handed off (right),
    and other replies that state a number or contact."""
    from retrain.gates.matching import stated_details

    answers = platform.ask_all_as_customers([(q, None) for q in offtopic], memory=True)
    outcomes = [a.get("memory_outcome") for a in answers]
    return {"n": len(offtopic), "verified": outcomes.count("verified"), "handoff": outcomes.count("handoff"),
            "clarified": sum(bool(a.get("clarified")) for a in answers),
            "wrong_fact": sum(bool(stated_details(a["choices"][0]["message"]["content"]))
                              for a, o in zip(answers, outcomes) if o != "handoff")}


def refit_selector(platform: Platform, facts: list[dict], offtopic: list[str]) -> dict:
    """An admin fits answer selection for the version in production (``tuneloop memory calibrate
    --save``: accepted phrasings as positives, logged questions no correction covers as negatives), then
    the held-out rewordings and the held-out half of the off-topic questions are asked again. The
    negatives are what a live deployment logs: the even off-topic lines were asked by earlier customers
    (``log_uncovered_traffic``); the odd lines judged here were never logged."""
    report = platform.call("GET", "/v1/memory/calibration", "admin", params={"save": "true"})
    fit = {key: report[key] for key in ("positives", "negatives", "fitted", "scored_by_model", "saved_for", "selector")}
    fit["verified_probability"] = report["suggested"]["threshold"] if report.get("suggested") else None
    return {"fit": fit, "reworded": judged(platform, facts, memory=True),
            "offtopic": offtopic_outcomes(platform, offtopic[1::2]), "general": general_share(platform, (True,))}


def log_uncovered_traffic(platform: Platform, offtopic: list[str], uncorrected: list[dict]) -> int:
    """Earlier customers asked things no correction covers (logged, not rated): the even off-topic lines
    and the customer wordings of the facts nobody corrects in this run. Calibration reads them as
    negatives."""
    asked = offtopic[0::2] + [w for f in uncorrected for w in f["customer_wordings"]]
    platform.ask_all(asked, memory=True, store=True)
    return len(asked)


def judged(platform: Platform, facts: list[dict], *, memory: bool, paraphrases: bool = True) -> dict:
    """Each fact's paraphrases (or canonical question) asked: the share right (every key fact), and per
    memory outcome how many replies, right ones and wrong-fact ones."""
    from retrain.gates.matching import missing_key_facts, wrong_facts

    pairs = [(q, f) for f in facts for q in (f["paraphrases"] if paraphrases else [f["question"]])]
    answers = platform.ask_all_as_customers([(q, f["id"]) for q, f in pairs], memory=memory)
    by_outcome: dict[str, dict] = {}
    right_total = wrong_total = 0
    for (_, fact), answer in zip(pairs, answers):
        reply = answer["choices"][0]["message"]["content"]
        others = [k for other in KB if other["id"] != fact["id"] for k in other["key_facts"]]
        right = not missing_key_facts(reply, fact["key_facts"])
        wrong = bool(wrong_facts(reply, fact["answer"], others))
        outcome = answer.get("memory_outcome") or "off"
        if answer.get("clarified"):  # the bot asked back first; the customer's yes or no decided this reply
            outcome = f"{outcome} after clarify"
        counts = by_outcome.setdefault(outcome, {"n": 0, "right": 0, "wrong_fact": 0})
        counts["n"] += 1
        counts["right"] += right
        counts["wrong_fact"] += wrong
        right_total, wrong_total = right_total + right, wrong_total + wrong
    n = len(pairs)
    verified = [c for o, c in by_outcome.items() if o.startswith("verified")]
    verified_n = sum(c["n"] for c in verified)
    return {"n": n, "right": right_total / n, "wrong_fact": wrong_total / n, "wrong_fact_n": wrong_total,
            "verified": verified_n / n, "verified_wrong": verified_n - sum(c["right"] for c in verified),
            "by_outcome": by_outcome}


def train_and_promote(platform: Platform) -> dict:
    """Train now → training → gates → promote → the new version serves. Times each stage."""
    started = time.time()
    job = platform.call("POST", "/v1/scheduler/train-now", "admin")
    snapshot_s = time.time() - started
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = platform.call("GET", f"/v1/fine_tuning/jobs/{job['id']}", "admin")
    if job["status"] != "succeeded":
        raise RuntimeError(f"training failed: {job.get('error')}")
    trained_at = time.time()
    candidate = job["fine_tuned_model"]
    version = platform.call("GET", f"/v1/registry/versions/{candidate}", "admin")
    while version["gate_report"] is None:
        time.sleep(1)
        version = platform.call("GET", f"/v1/registry/versions/{candidate}", "admin")
    gated_at = time.time()
    report = version["gate_report"]
    promote = {} if report["passed"] else {"reason": "benchmark: promote to measure it anyway"}
    platform.call("POST", f"/v1/registry/versions/{candidate}/promote", "admin", json=promote)
    expected = f"fp_tuneloop_{version['id']}"
    while platform.serving(memory=False) != expected or platform.serving(memory=True) != expected:
        time.sleep(0.2)
    served_at = time.time()
    return {
        "version": version["name"], "gates_passed": report["passed"], "gate_reasons": report["reasons"],
        "gates": {name: {k: g.get(k) for k in ("candidate_rate", "production_rate", "total", "candidate_passed",
                                               "passed", "status")}
                  for name, g in report["gates"].items()},
        "train_metrics": version["metrics"],
        "seconds": {"snapshot": snapshot_s, "training": trained_at - started - snapshot_s,
                    "gates": gated_at - trained_at, "swap": served_at - gated_at,
                    # as if "train now" came the moment the last approval did (the benchmark measures
                    # memory in between; that time is not part of the loop)
                    "total": served_at - started},
    }


def share_with_key_facts(platform: Platform, facts: list[dict], *, memory: bool, paraphrases: bool = True) -> float:
    return judged(platform, facts, memory=memory, paraphrases=paraphrases)["right"]


def general_share(platform: Platform, memories: tuple[bool, ...] = (False, True)) -> dict:
    """bench/general_questions.json asked with memory on (what customers get: a general question must
    not be handed off) and off; right = every key fact in the reply."""
    from retrain.gates.matching import missing_key_facts

    out = {"n": len(GENERAL)}
    for memory in memories:
        answers = platform.ask_all([q["question"] for q in GENERAL], memory=memory)
        right = sum(not missing_key_facts(a["choices"][0]["message"]["content"], q["key_facts"])
                    for a, q in zip(answers, GENERAL))
        out["memory_on" if memory else "memory_off"] = right
        if memory:
            out["handoff"] = sum(a.get("memory_outcome") == "handoff" for a in answers)
            out["clarify"] = sum(a.get("memory_outcome") == "clarify" for a in answers)
    return out


def run(args) -> dict:
    from engine.modelstore import BUNDLED_DIR_NAME, bundled_gguf_path, convert_gguf

    KB[:] = [json.loads(line) for line in args.kb.read_text().splitlines() if line.strip()]
    offtopic_file = args.kb.with_name(args.kb.name.replace("_kb.jsonl", "_offtopic.txt"))
    offtopic = load_offtopic(offtopic_file)
    base = Path(args.data_dir) / "models" / "base" / BUNDLED_DIR_NAME
    if not (base / "model.safetensors").is_file():
        convert_gguf(bundled_gguf_path(), base)
    round1, round2 = KB[:args.round1], KB[args.round1:args.round1 + args.round2]
    results: dict = {"kb": args.kb.stem.replace("_kb", ""), "round1": len(round1), "round2": len(round2),
                     "max_tokens": args.max_tokens, "phrasings": args.phrasings, "accept_all": args.accept_all, "refit": args.refit}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TUNELOOP_DATA_DIR": tmp, "TUNELOOP_BASE_MODEL": str(base), "TUNELOOP_ADMIN_PASSWORD": "bench-admin",
               "TUNELOOP_RATE_LIMIT_PER_MINUTE": "0", "TUNELOOP_VERSION_POLL_SECONDS": "0.5",
               "TUNELOOP_LOG_LEVEL": "WARNING"}
        platform = Platform(env, args.max_tokens)
        try:
            step = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
            step(f"{results['kb']}: before: paraphrases and general questions on the base model")
            results["before"] = {"paraphrases": judged(platform, round1, memory=False),
                                 "general": general_share(platform)}
            step(f"round 1: {len(round1)} customers dislike, alice corrects, bob approves")
            results["phrasings1"] = correct(platform, round1, phrasings=args.phrasings, accept_all=args.accept_all)
            results["instant_fix"] = instant_fix(platform, round1, offtopic)
            if args.refit:
                results["uncovered_logged"] = log_uncovered_traffic(platform, offtopic, KB[args.round1 + args.round2:])
                step("round 1: the selector fitted for the base version, measured again")
                results["instant_fix_refit"] = refit_selector(platform, round1, offtopic)
            step("round 1: train now → gates → promote")
            results["round1_loop"] = train_and_promote(platform)
            step(f"round 1 done in {results['round1_loop']['seconds']['total']:.0f}s; measuring")
            results["after1"] = {"memory_off": judged(platform, round1, memory=False),
                                 "memory_on": judged(platform, round1, memory=True),
                                 "canonical_memory_off": share_with_key_facts(platform, round1, memory=False,
                                                                              paraphrases=False),
                                 "general": general_share(platform)}
            if args.refit:
                step("round 1: the selector fitted for the new version, measured again")
                results["after1_refit"] = refit_selector(platform, round1, offtopic)
            if round2:
                step(f"round 2: {len(round2)} more corrections")
                results["phrasings2"] = correct(platform, round2, phrasings=args.phrasings, accept_all=args.accept_all)
                results["round2_loop"] = train_and_promote(platform)
                step(f"round 2 done in {results['round2_loop']['seconds']['total']:.0f}s; measuring")
                results["after2"] = {
                    "round1_canonical_memory_off": share_with_key_facts(platform, round1, memory=False, paraphrases=False),
                    "round1_memory_off": judged(platform, round1, memory=False),
                    "round2_memory_off": judged(platform, round2, memory=False),
                    "round2_memory_on": judged(platform, round2, memory=True),
                    "general": general_share(platform)}
        finally:
            platform.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=Path, default=ROOT / "examples" / "acme_kb.jsonl",
                        help="knowledge base (JSON lines: question, answer, key_facts, paraphrases, customer_wordings); "
                             "its off-topic questions are read from the file beside it named *_offtopic.txt")
    parser.add_argument("--round1", type=int, default=40, help="corrections in round 1")
    parser.add_argument("--round2", type=int, default=20, help="corrections in round 2 (0: one round)")
    parser.add_argument("--max-tokens", type=int, default=48, help="answer length when asking questions")
    parser.add_argument("--no-phrasings", dest="phrasings", action="store_false",
                        help="staff accept no alternative phrasings (by default they accept the suggestions found "
                             "in the logs that are wordings of the same fact: the KB's customer_wordings)")
    parser.add_argument("--accept-all", action="store_true",
                        help="staff accept every phrasing suggestion offered, as offered")
    parser.add_argument("--no-refit", dest="refit", action="store_false",
                        help="skip fitting the selector for each version (tuneloop memory calibrate --save) and "
                             "measuring again with it")
    parser.add_argument("--data-dir", default=str(ROOT / ".bench-data"),
                        help="keeps the converted base model between runs")
    args = parser.parse_args()
    if not args.kb.is_file():
        parser.error(f"--kb {args.kb}: no such file")
    results = run(args)
    results["machine"] = machine()
    render(results)


if __name__ == "__main__":
    main()
