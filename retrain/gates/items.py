"""What the gates ask, built only from artifacts: the candidate's dataset snapshot and its ancestors'
(learned, generalises, not_forgotten), the golden set and the shipped general set
(``general/questions.json``), whose content hashes the report records (``gate_inputs``), so a report
can be recomputed from the artifacts whatever happened to the corrections since."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from engine.prompting import with_system_prompt
from feedback.examples import TrainingExample
from registry.golden import list_golden
from registry.lifecycle import lineage
from registry.models import ModelVersion
from retrain.datasets import SPLITS, ancestry_snapshots, load_examples, new_since
from retrain.models import DatasetSnapshot
from retrain.trainer.augment import held_out_phrasing
from tuneloop.core.settings import Settings


GENERAL_DIR = Path(__file__).parent / "general"


@dataclass
class GateItem:
    """One question a gate asks: the prompt (system … user), the reference answer, its key facts."""

    gate: str
    name: str
    messages: list[dict[str, str]]
    reference: str
    key_facts: list[str] = field(default_factory=list)


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
    return [_user_item(settings, "golden", f"{g.id}: {g.question[:60]}", g.question, g.answer, g.key_facts)
            for g in list_golden(session)]


def example_item(gate: str, example: TrainingExample) -> GateItem:
    """A snapshot's example asked as trained: its prompt, its answer as the reference."""
    return GateItem(gate, example.name, list(example.messages), example.completion, list(example.key_facts))


def generalises_items(examples: list[TrainingExample]) -> list[GateItem]:
    """The held-out phrasing of each new correction that has one (``retrain.trainer.augment.split_phrasings``:
    one of two or more accepted phrasings, never trained on), asked as the correction's own question is."""
    held = ((example, held_out_phrasing(example)) for example in examples)
    return [example_item("generalises", example.asking(phrasing)) for example, phrasing in held
            if phrasing is not None]


def correction_items(session: Session, settings: Settings, candidate: ModelVersion) -> tuple[list[GateItem], list[GateItem]]:
    """(learned, not_forgotten) items for ``candidate``, read only from dataset snapshots, so a report
    can be recomputed from the artifacts whatever happened to the corrections since.
    ``generalises_items(new_training_examples(...))`` are the held-out phrasings of the learned ones.

    learned: the candidate's training split that is new since its ancestors' snapshots
    (``retrain.datasets.new_since``: a correction edited since is new). not_forgotten: the rest of the
    candidate's snapshot (both splits: what an ancestor already held); a candidate trained from a file,
    with no snapshot of its own, is held to its newest ancestor's snapshot."""
    ancestors = _ancestors_snapshots(session, candidate)
    own = session.get(DatasetSnapshot, candidate.snapshot_id) if candidate.snapshot_id else None
    learned = [example_item("learned", e) for e in new_training_examples(session, settings, candidate, ancestors)]
    source = own or next(iter(ancestors), None)
    not_forgotten: list[GateItem] = []
    if source is not None:
        new = {e.key for e in new_since(settings, source, ancestors, splits=SPLITS)}
        examples = load_examples(settings, source, "train") + load_examples(settings, source, "valid")
        not_forgotten = [example_item("not_forgotten", e) for e in examples if e.key not in new]
    return learned, not_forgotten


def new_training_examples(session: Session, settings: Settings, candidate: ModelVersion,
                          ancestors: list[DatasetSnapshot] | None = None) -> list[TrainingExample]:
    """The examples of ``candidate``'s training split that are new since its ancestors' snapshots."""
    snapshot = session.get(DatasetSnapshot, candidate.snapshot_id) if candidate.snapshot_id else None
    if snapshot is None:
        return []
    # The validation split is held out of training on purpose (its loss is in the job's metrics);
    # asking the candidate to "know" facts it never saw would make this gate fail by construction.
    return new_since(settings, snapshot, _ancestors_snapshots(session, candidate) if ancestors is None else ancestors)


def _ancestors_snapshots(session: Session, candidate: ModelVersion) -> list[DatasetSnapshot]:
    """The snapshots the candidate's ancestors (not the candidate) were trained on, newest first."""
    parent = session.get(ModelVersion, candidate.parent_id) if candidate.parent_id else None
    return ancestry_snapshots(session, parent) if parent is not None else []


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
