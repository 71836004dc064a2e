"""Evaluation gates: may a candidate version replace the one in production?

Every gate asks both versions the same questions (greedy decoding, correction memory off: the
engine is used directly) and judges each answer against a reference with ``retrain.matching``
(embedding similarity ≥ ``gate_similarity_threshold`` and every key fact present). The four gates:

1. **learned** — the corrections in the snapshot's training split that are new since the parent
   (examples whose lineage is not in any ancestor's snapshot). The candidate must answer at least
   ``gate_learned_min_pass_rate`` of them correctly (default 0.95). The validation split is held
   out of training; it is measured by the job's validation loss/accuracy, not asked here.
   **generalises** — the held-out phrasing of each new correction that has two or more accepted
   phrasings (``retrain.augment.split_phrasings``; never trained on). The candidate must answer at
   least ``gate_generalises_min_pass_rate`` of them; each one is in the report by name.
2. **not_forgotten** — every earlier correction (in an ancestor's snapshot and still in the candidate's
   own; the suite grows each round). The candidate's pass rate may fall at most ``gate_forgetting_margin`` (default
   0.05) below production's; every item that passes on production and fails on the candidate is
   listed by name either way.
3. **golden** — the admin-curated must-pass questions (``registry.golden``): all must pass.
4. **general** — the shipped general questions (``retrain/general/questions.json``) and perplexity on
   a short general text (``retrain/general/text.txt``). The candidate fails when its pass rate falls
   more than ``gate_general_margin`` (0.10) below production's *and* a paired sign test says the drop
   is not chance (p < ``gate_general_significance``, 0.05): on 15 questions one answer is 7 points,
   and a round that flipped 2 borderline answers was rejected by noise. Perplexity may rise at most
   ``gate_perplexity_margin`` (0.25, relative). Answers that must never change belong in the golden set.

Items come only from dataset snapshots, the golden set and the shipped general set, and the report
records the snapshots and the content hashes of the other two; ``gate_report.json`` beside the
adapter holds the whole report, so it can be recomputed from the artifacts.

A gate with no questions is reported as ``"status": "not measured"`` (``"measured": false``), never as
passed; only an empty **learned** gate blocks promotion (nothing new to check the candidate on: an
admin must give a written reason). Answers are capped at 1.5× the reference's length
+ 8 tokens (at most ``gate_max_tokens``, 96), and questions are decoded in batches sorted by prompt
length, so a few hundred questions take minutes on a CPU. See docs/gates.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from registry import versions
from engine.protocol import SamplingParams
from engine.transformers_engine import LoadedModel, LocalEngine, perplexity
from engine.prompting import trim_to_budget, with_system_prompt
from retrain.matching import match_answers
from registry.lifecycle import lineage, set_status
from registry.models import GateReport, ModelVersion, VersionStatus
from retrain.models import DatasetSnapshot
from tuneloop.core.accounts.service import audit
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

GENERAL_DIR = Path(__file__).parent / "general"
GATES = ("learned", "generalises", "not_forgotten", "golden", "general")


@dataclass
class GateItem:
    """One question a gate asks: the prompt (system … user), the reference answer, its key facts."""

    gate: str
    name: str
    messages: list[dict[str, str]]
    reference: str
    key_facts: list[str] = field(default_factory=list)


@dataclass
class GateOutcome:
    passed: bool
    summary: dict[str, Any]
    items: list[dict[str, Any]]


# --- what the gates ask ------------------------------------------------------------------------
def _user_item(settings: Settings, gate: str, name: str, question: str, answer: str, facts: list[str]) -> GateItem:
    messages = with_system_prompt(settings.resolved_system_prompt, [{"role": "user", "content": question}])
    return GateItem(gate, name, messages, answer, list(facts))


def general_items(settings: Settings) -> list[GateItem]:
    questions = json.loads((GENERAL_DIR / "questions.json").read_text(encoding="utf-8"))
    return [_user_item(settings, "general", q["id"], q["question"], q["answer"], q["key_facts"]) for q in questions]


def general_texts() -> list[str]:
    """The general text for perplexity, one paragraph per entry."""
    text = (GENERAL_DIR / "text.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def golden_items(session: Session, settings: Settings) -> list[GateItem]:
    from registry.golden import list_golden

    return [_user_item(settings, "golden", f"{g.id}: {g.question[:60]}", g.question, g.answer, g.key_facts)
            for g in list_golden(session)]


def _record_item(gate: str, record: dict[str, Any]) -> GateItem:
    """A snapshot line (chat format: messages ending with the reference answer, + "tuneloop" metadata)."""
    meta = record.get("tuneloop") or {}
    *prompt, reference = record["messages"]
    name = f"{meta.get('correction_id') or meta.get('id')}: {prompt[-1]['content'][:60]}"
    return GateItem(gate, name, prompt, reference["content"], list(meta.get("key_facts") or []))


def _snapshot_lineages(session: Session, settings: Settings, snapshot_id: str | None) -> set[str]:
    from retrain.datasets import read_manifest

    snapshot = session.get(DatasetSnapshot, snapshot_id) if snapshot_id else None
    if snapshot is None:
        return set()
    return {e["lineage_id"] for e in read_manifest(settings, snapshot)["examples"]}


def generalises_items(records: list[dict[str, Any]]) -> list[GateItem]:
    """The held-out phrasing of each new correction that has one (``retrain.augment.split_phrasings``:
    one of two or more accepted phrasings, never trained on), asked as the correction's own question is."""
    from retrain.augment import held_out_phrasing

    items = []
    for record in records:
        held = held_out_phrasing(record)
        if held is not None:
            item = _record_item("generalises", record)
            meta = record.get("tuneloop") or {}
            item.name = f"{meta.get('correction_id') or meta.get('id')}: {held[:60]}"
            item.messages = [*item.messages[:-1], {"role": "user", "content": held}]
            items.append(item)
    return items


def correction_items(session: Session, settings: Settings, candidate: ModelVersion) -> tuple[list[GateItem], list[GateItem]]:
    """(learned, not_forgotten) items for ``candidate``, read only from dataset snapshots, so a report
    can be recomputed from the artifacts whatever happened to the corrections since.
    ``generalises_items(new_training_records(...))`` are the held-out phrasings of the learned ones.

    learned: the candidate's training split, less every example whose lineage is in an ancestor's
    snapshot. not_forgotten: the examples of the candidate's snapshot (both splits: the current text of
    each correction) whose lineage an ancestor already had; a candidate trained from a file, with no
    snapshot of its own, is held to its newest ancestor's snapshot."""
    from retrain.datasets import load_examples

    ancestors = lineage(session, candidate)[1:]
    earlier: set[str] = set()
    for ancestor in ancestors:
        earlier |= _snapshot_lineages(session, settings, ancestor.snapshot_id)
    own = session.get(DatasetSnapshot, candidate.snapshot_id) if candidate.snapshot_id else None
    learned = [_record_item("learned", r) for r in new_training_records(session, settings, candidate, earlier)]
    source = own or next((s for s in (session.get(DatasetSnapshot, a.snapshot_id) for a in ancestors
                                      if a.snapshot_id) if s is not None), None)
    not_forgotten: list[GateItem] = []
    if source is not None:
        records = load_examples(settings, source, "train") + load_examples(settings, source, "valid")
        not_forgotten = [_record_item("not_forgotten", r) for r in records if _lineage(r) in earlier]
    return learned, not_forgotten


def _lineage(record: dict[str, Any]) -> str | None:
    return (record.get("tuneloop") or {}).get("lineage_id")


def new_training_records(session: Session, settings: Settings, candidate: ModelVersion,
                         earlier: set[str] | None = None) -> list[dict[str, Any]]:
    """The snapshot lines of ``candidate``'s training split whose lineage no ancestor's snapshot had."""
    from retrain.datasets import load_examples

    if earlier is None:
        earlier = set()
        for ancestor in lineage(session, candidate)[1:]:
            earlier |= _snapshot_lineages(session, settings, ancestor.snapshot_id)
    snapshot = session.get(DatasetSnapshot, candidate.snapshot_id) if candidate.snapshot_id else None
    if snapshot is None:
        return []
    # The validation split is held out of training on purpose (its loss is in the job's metrics);
    # asking the candidate to "know" facts it never saw would make this gate fail by construction.
    return [r for r in load_examples(settings, snapshot, "train") if _lineage(r) not in earlier]


# --- asking ------------------------------------------------------------------------------------
def _answer_budget(tokenizer: Any, reference: str, settings: Settings) -> int:
    """Tokens to generate for one question: enough for an answer like the reference, rounded up to
    16 so questions share batches."""
    n = len(tokenizer(reference, add_special_tokens=False)["input_ids"])
    return min(settings.gate_max_tokens, 16 * math.ceil((1.5 * n + 8) / 16))


def answer_all(loaded: LoadedModel, items: list[GateItem], settings: Settings) -> list[str]:
    """Greedy answers of ``loaded`` to every item, from the engine production serves with (what is
    gated is what serves: ``serving_backend=llamacpp`` asks llama.cpp, on the version's GGUF)."""
    if settings.serving_backend == "llamacpp":
        return _answer_with_llamacpp(loaded, items, settings)
    engine = LocalEngine(loaded, max_batch_size=max(settings.max_batch_size, 16))
    answers = [""] * len(items)
    try:
        for max_tokens, indices in _budget_groups(loaded, items, settings):
            budget = min(settings.context_budget, loaded.max_context) - max_tokens
            prompts = {i: trim_to_budget(loaded.tokenizer, items[i].messages, budget)[1] for i in indices}
            order = sorted(indices, key=lambda i: len(prompts[i]))
            done = engine.generate_many([prompts[i] for i in order], _greedy(settings, max_tokens))
            for i, completion in zip(order, done):
                answers[i] = completion.text.strip()
    finally:
        engine.close()
    return answers


def _answer_with_llamacpp(loaded: LoadedModel, items: list[GateItem], settings: Settings) -> list[str]:
    from engine.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(settings.model_copy(update={"max_batch_size": max(settings.max_batch_size, 16)}),
                            lambda _version: loaded.spec)
    version = _Served(loaded.spec.id)
    answers = [""] * len(items)
    try:
        engine.swap(version)
        for max_tokens, indices in _budget_groups(loaded, items, settings):
            done = engine.generate_many(version, [items[i].messages for i in indices], _greedy(settings, max_tokens))
            for i, completion in zip(indices, done):
                answers[i] = completion.text.strip()
    finally:
        engine.close()
    return answers


@dataclass
class _Served:
    """A version as an engine needs it (``engine.protocol.ServedVersion``): the gates load files, not rows."""

    id: str
    name: str = ""
    adapter_path: str | None = None
    hosted_model: str | None = None


def _budget_groups(loaded: LoadedModel, items: list[GateItem], settings: Settings) -> list[tuple[int, list[int]]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[_answer_budget(loaded.tokenizer, item.reference, settings)].append(i)
    return sorted(groups.items())


def _greedy(settings: Settings, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, repetition_ngram=settings.repetition_guard_ngram)


# --- judging -----------------------------------------------------------------------------------
def evaluate(settings: Settings, candidate: LoadedModel, baseline: LoadedModel, items: list[GateItem],
             texts: list[str] | None = None) -> GateOutcome:
    """Run every gate of ``items`` on both models and judge them (no database involved)."""
    started = time.perf_counter()
    texts = general_texts() if texts is None else texts
    cand_answers = answer_all(candidate, items, settings)
    base_answers = cand_answers if baseline is candidate else answer_all(baseline, items, settings)
    refs, facts = [i.reference for i in items], [i.key_facts for i in items]
    matches = match_answers(cand_answers + base_answers, refs + refs, facts + facts,
                            threshold=settings.gate_similarity_threshold)
    n = len(items)
    rows = []
    for k, item in enumerate(items):
        cand, base = matches[k], matches[n + k]
        rows.append({
            "gate": item.gate, "name": item.name, "question": item.messages[-1]["content"],
            "reference": item.reference, "key_facts": item.key_facts,
            "candidate": {"answer": cand_answers[k], **cand.as_dict()},
            "production": {"answer": base_answers[k], **base.as_dict()},
            "verdict": _verdict(cand.passed, base.passed),
        })
    ppl = None
    if texts:
        cand_ppl = perplexity(candidate, texts)
        ppl = (cand_ppl, cand_ppl if baseline is candidate else perplexity(baseline, texts))
    gates = {gate: _judge(gate, [r for r in rows if r["gate"] == gate], settings, ppl) for gate in GATES}
    reasons = [g["reason"] for g in gates.values() if g["blocks"]]
    summary = {
        "passed": not reasons, "reasons": reasons, "gates": gates,
        "candidate_version_id": candidate.spec.id, "baseline_version_id": baseline.spec.id,
        "thresholds": {k: getattr(settings, k) for k in (
            "gate_similarity_threshold", "gate_learned_min_pass_rate", "gate_generalises_min_pass_rate",
            "gate_forgetting_margin",
            "gate_general_margin", "gate_perplexity_margin", "gate_max_tokens")},
        "seconds": round(time.perf_counter() - started, 1),
        "engine": "llamacpp" if settings.serving_backend == "llamacpp" else "transformers",
    }
    return GateOutcome(not reasons, summary, rows)


def _verdict(candidate_passed: bool, production_passed: bool) -> str:
    if candidate_passed:
        return "pass" if production_passed else "fixed"
    return "newly_failing" if production_passed else "fail"


def _judge(gate: str, rows: list[dict], settings: Settings, ppl: tuple[float, float] | None) -> dict[str, Any]:
    n = len(rows)
    cand = sum(r["candidate"]["passed"] for r in rows)
    prod = sum(r["production"]["passed"] for r in rows)
    cand_rate, prod_rate = (cand / n, prod / n) if n else (1.0, 1.0)
    newly_failing = [r["name"] for r in rows if r["verdict"] == "newly_failing"]
    result: dict[str, Any] = {"total": n, "candidate_passed": cand, "production_passed": prod,
                              "candidate_rate": round(cand_rate, 4), "production_rate": round(prod_rate, 4),
                              "newly_failing": newly_failing}
    eps = 1e-9
    if gate == "learned":
        ok = cand_rate + eps >= settings.gate_learned_min_pass_rate
        reason = (f"learned: the candidate answered {cand}/{n} new or validation corrections correctly; "
                  f"needs {settings.gate_learned_min_pass_rate:.0%}")
    elif gate == "generalises":
        ok = cand_rate + eps >= settings.gate_generalises_min_pass_rate
        reason = (f"generalises: the candidate answered {cand}/{n} held-out phrasings of the new corrections "
                  f"correctly; needs {settings.gate_generalises_min_pass_rate:.0%}")
    elif gate == "not_forgotten":
        ok = cand_rate + eps >= prod_rate - settings.gate_forgetting_margin
        reason = (f"not_forgotten: pass rate {cand_rate:.0%} vs production {prod_rate:.0%} (margin "
                  f"{settings.gate_forgetting_margin:.0%}); newly failing: {', '.join(newly_failing)}")
    elif gate == "golden":
        ok = cand == n
        failing = [r["name"] for r in rows if not r["candidate"]["passed"]]
        reason = f"golden: {n - cand} must-pass question(s) failed: {', '.join(failing)}"
    else:
        gained = sum(r["verdict"] == "fixed" for r in rows)
        p_value = worse_p_value(len(newly_failing), gained)
        result.update(gained=gained, lost=len(newly_failing), p_value=round(p_value, 4))
        ok = (cand_rate + eps >= prod_rate - settings.gate_general_margin
              or p_value >= settings.gate_general_significance)
        reason = (f"general: pass rate {cand_rate:.0%} vs production {prod_rate:.0%} "
                  f"(margin {settings.gate_general_margin:.0%}); {len(newly_failing)} lost, {gained} gained, "
                  f"p={p_value:.3f} < {settings.gate_general_significance}: {', '.join(newly_failing)}")
        if ppl is not None:
            limit = ppl[1] * (1 + settings.gate_perplexity_margin)
            result.update(candidate_perplexity=round(ppl[0], 3), production_perplexity=round(ppl[1], 3))
            if ppl[0] > limit:
                reason = reason if not ok else "general:"
                reason += (f" perplexity {ppl[0]:.2f} vs production {ppl[1]:.2f} "
                           f"(allowed up to {limit:.2f})")
                ok = False
    result["measured"] = n > 0
    if n == 0:  # nothing was asked: reported as not measured, never as passed
        result["note"] = "not measured: no questions for this gate"
        ok = gate not in BLOCKING_WHEN_EMPTY
        reason = f"{gate}: not measured (no questions); {NOT_MEASURED_HINTS.get(gate, '')}"
    result["passed"] = ok and n > 0  # a gate nobody could fail is never "passed"
    result["blocks"] = not ok
    result["status"] = "not measured" if n == 0 else ("passed" if ok else "failed")
    result["reason"] = "" if ok else reason
    return result


# A candidate with no new correction to check it on (trained from an uploaded file, or nothing new)
# cannot be promoted without an admin's written reason. The other gates may honestly have nothing to
# ask (round 1 has nothing earlier to forget; a new deployment has no golden set): they are reported
# as not measured, which neither passes nor blocks.
BLOCKING_WHEN_EMPTY = {"learned"}
NOT_MEASURED_HINTS = {
    "learned": "the training data held no approved corrections to check the candidate on (an uploaded file?)",
    "not_forgotten": "there are no earlier approved corrections yet",
    "golden": "add must-pass questions (POST /v1/golden)",
    "generalises": "no new correction has two or more accepted phrasings to hold one out",
    "general": "the general question set is empty",
}


def worse_p_value(lost: int, gained: int) -> float:
    """One-sided exact sign test (McNemar) on the questions only one version answers correctly: the
    chance of losing at least ``lost`` of the ``lost + gained`` if neither version were better."""
    n = lost + gained
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2 ** n if n else 1.0


# --- running on the registry -------------------------------------------------------------------
def run_gates(settings: Settings, db_engine: Engine, candidate_id: str, *,
              progress: Callable[[str], None] = lambda _stage: None) -> GateReport:
    """Gate ``candidate_id`` against the current production version, store the GateReport and link
    it from the version. A candidate that passes becomes ``approved`` (and, with
    ``settings.auto_promote``, is promoted). Takes minutes on a CPU for a few hundred questions;
    the database is only used briefly before and after. ``progress`` hears each stage (the worker
    records it on the ``GateRun``)."""
    with Session(db_engine, expire_on_commit=False) as session:
        candidate = session.get(ModelVersion, candidate_id)
        if candidate is None or candidate.status == VersionStatus.deleted:
            from registry.lifecycle import VersionNotFoundError

            raise VersionNotFoundError(f"no model version {candidate_id!r} to gate")
        if candidate.hosted_model:
            from registry.lifecycle import InvalidStateError

            raise InvalidStateError(f"{candidate_id} is served by a hosted API; the gates run local models only")
        baseline = versions.production_version(session)
        learned, not_forgotten = correction_items(session, settings, candidate)
        golden = golden_items(session, settings)
        generalises = generalises_items(new_training_records(session, settings, candidate))
        items = learned + generalises + not_forgotten + golden + general_items(settings)
        inputs = gate_inputs(session, candidate, golden)
        candidate_spec, baseline_spec = (versions.version_spec(v, settings) for v in (candidate, baseline))
        adapter_path = candidate.adapter_path
    progress("loading the candidate and production models")
    cand_model = LoadedModel.load(candidate_spec, device=settings.device, dtype=settings.dtype)
    base_model = cand_model if baseline_spec == candidate_spec else LoadedModel.load(
        baseline_spec, device=settings.device, dtype=settings.dtype)
    progress(f"asking {len(items)} questions ({len(learned)} learned, {len(generalises)} held-out phrasings, "
             f"{len(not_forgotten)} not forgotten, {len(golden)} golden, "
             f"{len(items) - len(learned) - len(generalises) - len(not_forgotten) - len(golden)} general)")
    outcome = evaluate(settings, cand_model, base_model, items)
    outcome.summary["inputs"] = inputs
    del cand_model, base_model
    report = _store(db_engine, candidate_id, baseline_spec.id, outcome)
    if adapter_path:
        write_report_file(settings.model_store_dir / adapter_path, report)
    if outcome.passed and settings.auto_promote:
        _auto_promote(settings, db_engine, candidate_id)
    return report


def gate_inputs(session: Session, candidate: ModelVersion, golden: list[GateItem]) -> dict[str, Any]:
    """What the items were built from: the snapshots, and content hashes of the golden and general sets."""
    general = b"".join((GENERAL_DIR / name).read_bytes() for name in ("questions.json", "text.txt"))
    golden_text = json.dumps([[g.messages, g.reference, g.key_facts] for g in golden], sort_keys=True)
    return {
        "snapshot_id": candidate.snapshot_id,
        "ancestor_snapshot_ids": [v.snapshot_id for v in lineage(session, candidate)[1:] if v.snapshot_id],
        "golden_sha256": hashlib.sha256(golden_text.encode()).hexdigest(),
        "general_sha256": hashlib.sha256(general).hexdigest(),
    }


def write_report_file(adapter_dir: Path, report: GateReport) -> Path:
    """``gate_report.json`` beside the adapter, written atomically (a reader never sees half a file)."""
    target = adapter_dir / "gate_report.json"
    staging = target.with_name(f".gate_report.json.{os.getpid()}.partial")
    body = {"id": report.id, "candidate_version_id": report.candidate_version_id,
            "baseline_version_id": report.baseline_version_id, "passed": report.passed,
            "created_at": report.created_at.isoformat(), "summary": report.summary, "items": report.items}
    staging.write_text(json.dumps(body, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(staging, target)
    return target


def _store(db_engine: Engine, candidate_id: str, baseline_id: str, outcome: GateOutcome) -> GateReport:

    with session_scope(db_engine) as session:
        report = GateReport(candidate_version_id=candidate_id, baseline_version_id=baseline_id,
                            passed=outcome.passed, summary=outcome.summary, items=outcome.items, created_at=utcnow())
        session.add(report)
        version = session.get(ModelVersion, candidate_id)
        version.gate_report_id = report.id
        if outcome.passed and version.status == VersionStatus.candidate:
            set_status(session, version, VersionStatus.approved, "gates")
        session.add(version)
        audit(session, actor="gates", action="version.gated", object_type="modelversion", object_id=candidate_id,
              report_id=report.id, passed=outcome.passed, reasons=outcome.summary["reasons"])
    return report


def _auto_promote(settings: Settings, db_engine: Engine, candidate_id: str) -> None:
    from registry.lifecycle import RegistryError, PromotionConflictError, auto_promote

    try:
        with session_scope(db_engine) as session:
            version = session.get(ModelVersion, candidate_id)
            if version.status == VersionStatus.approved:
                auto_promote(session, settings, version)
    except (RegistryError, PromotionConflictError) as exc:
        log.warning("auto-promotion of %s skipped: %s", candidate_id, exc)
