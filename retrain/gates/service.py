"""Evaluation gates: may a candidate version replace the one in production?

Every gate asks both versions the same questions (greedy decoding, correction memory off: the
engine is used directly) and judges each answer against a reference with ``retrain.gates.matching``
(embedding similarity ≥ ``gate_similarity_threshold`` and every key fact present). The four gates:

1. **learned** — the corrections in the snapshot's training split that are new since the parent
   (``retrain.datasets.new_since``: examples whose revision no ancestor's snapshot held, so an edited
   answer counts). The candidate must answer at least
   ``gate_learned_min_pass_rate`` of them correctly (default 0.95). The validation split is held
   out of training; it is measured by the job's validation loss/accuracy, not asked here.
   **generalises** — the held-out phrasing of each new correction that has two or more accepted
   phrasings (``retrain.trainer.augment.split_phrasings``; never trained on). The candidate must answer at
   least ``gate_generalises_min_pass_rate`` of them; each one is in the report by name.
2. **not_forgotten** — every earlier correction (in an ancestor's snapshot, unedited, and still in the
   candidate's own; the suite grows each round). The candidate's pass rate may fall at most ``gate_forgetting_margin`` (default
   0.05) below production's; every item that passes on production and fails on the candidate is
   listed by name either way.
3. **golden** — the admin-curated must-pass questions (``registry.golden``): all must pass.
4. **general** — the shipped general questions (``retrain/gates/general/questions.json``) and perplexity on
   a short general text (``retrain/gates/general/text.txt``). The candidate fails when its pass rate falls
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

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from engine.backends import engine_for
from engine.transformers_model import LoadedModel
from engine.upstream import UpstreamAdapterError
from registry import versions
from registry.lifecycle import (InvalidStateError, PromotionConflictError, RegistryError, VersionNotFoundError,
                                auto_promote, set_status)
from registry.models import GateReport, ModelVersion, VersionStatus
from retrain.gates.items import (correction_items, gate_inputs, general_items, generalises_items, golden_items,
                                 new_training_examples)
from retrain.gates.judging import GateOutcome, evaluate
from tuneloop.core.accounts.service import audit
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


def run_gates(settings: Settings, db: Engine, candidate_id: str, *,
              progress: Callable[[str], None] = lambda _stage: None) -> GateReport:
    """Gate ``candidate_id`` against the current production version, store the GateReport and link
    it from the version. A candidate that passes becomes ``approved`` (and, with
    ``settings.auto_promote``, is promoted). Takes minutes on a CPU for a few hundred questions;
    the database is only used briefly before and after. ``progress`` hears each stage (the worker
    records it on the ``GateRun``)."""
    with Session(db, expire_on_commit=False) as session:
        candidate = session.get(ModelVersion, candidate_id)
        if candidate is None or candidate.status == VersionStatus.deleted:
            raise VersionNotFoundError(f"no model version {candidate_id!r} to gate")
        if candidate.hosted_model:
            raise InvalidStateError(f"{candidate_id} is served by a hosted API; the gates run local models only")
        baseline = versions.production_version(session)
        learned, not_forgotten = correction_items(session, settings, candidate)
        golden = golden_items(session, settings)
        generalises = generalises_items(new_training_examples(session, settings, candidate))
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
    report = _store(db, candidate_id, baseline_spec.id, outcome)
    if adapter_path:
        write_report_file(settings.model_store_dir / adapter_path, report)
    if outcome.passed and settings.auto_promote:
        _auto_promote(settings, db, candidate_id)
    return report


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


def _store(db: Engine, candidate_id: str, baseline_id: str, outcome: GateOutcome) -> GateReport:
    with session_scope(db) as session:
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


def _auto_promote(settings: Settings, db: Engine, candidate_id: str) -> None:
    """Promote a candidate that passed, checked as an admin's promotion is, including the serving engine's
    ``prepare`` (an upstream that cannot load the adapter refuses; llama.cpp writes the version's GGUF)."""
    try:
        with session_scope(db) as session:
            version = session.get(ModelVersion, candidate_id)
            if version.status != VersionStatus.approved:
                return
            serving = engine_for(settings, lambda served: versions.version_spec(served, settings))
            try:
                auto_promote(session, settings, version, prepare=serving.prepare)
            finally:
                serving.close()
    except (RegistryError, PromotionConflictError, UpstreamAdapterError) as exc:
        log.warning("auto-promotion of %s skipped: %s", candidate_id, exc)
