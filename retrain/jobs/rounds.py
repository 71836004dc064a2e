"""What one round of training trains on: the new examples of the job's snapshot since the snapshots of
its parent's ancestry (``retrain.datasets.new_since``), plus a share of earlier ones replayed
(``retrain.trainer.replay``), or an uploaded file as it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from feedback.examples import TrainingExample
from feedback.preferences import preference_pairs
from registry.models import ModelVersion
from registry.versions import version_spec
from retrain.datasets import ancestry_snapshots, get_snapshot, load_examples, load_preferences, new_since
from retrain.jobs.files import get_file, read_examples
from retrain.models import FineTuneJob
from retrain.trainer.replay import select_for_round
from tuneloop.core.settings import Settings


@dataclass
class TrainingRound:
    """The inputs of one job: where it starts from and which examples it sees."""

    parent_id: str
    base_dir: Path
    parent_adapter_dir: Path | None
    train: list[TrainingExample]
    valid: list[TrainingExample]
    n_new: int
    n_replayed: int
    new_keys: set[str] | None  # ``TrainingExample.key`` of the new examples (None: all are new, e.g. an uploaded file)

    def describe(self, config: Any) -> str:
        """The job event that says what this round trains."""
        return (f"Training {len(self.train)} examples ({self.n_new} new, {self.n_replayed} replayed), "
                f"{len(self.valid)} validation, {config.n_epochs} epochs (at least {config.min_steps} steps), "
                f"continuing from {self.parent_id}" + (" (its adapter)" if self.parent_adapter_dir else " (fresh LoRA)")
                + (f"; the parent first answers {config.kl_anchors} general prompts for the KL penalty"
                   if config.kl_weight > 0 else ""))


def plan_round(session: Session, settings: Settings, job: FineTuneJob, config: Any) -> TrainingRound:
    """Base model, parent adapter and the examples of this round (new + replayed)."""
    parent = session.get(ModelVersion, job.parent_version_id)
    spec = version_spec(parent, settings)
    if job.snapshot_id:
        snapshot = get_snapshot(session, job.snapshot_id)
        current, valid = load_examples(settings, snapshot, "train"), load_examples(settings, snapshot, "valid")
        # same data as the parent: train on all of it
        earlier = [] if parent.snapshot_id == snapshot.id else ancestry_snapshots(session, parent)
        new_keys = {e.key for e in new_since(settings, snapshot, earlier)}
        seen = {e.key for e in current} - new_keys
        train, n_new, n_replayed = select_for_round(current, seen, replay_fraction=config.replay_fraction,
                                                     seed=config.seed)
    else:
        train = _file_examples(session, settings, job.training_file_id)
        valid = _file_examples(session, settings, job.validation_file_id) if job.validation_file_id else []
        n_new, n_replayed, new_keys = len(train), 0, None
    return TrainingRound(parent.id, spec.base_dir, spec.adapter_dir, train, valid, n_new, n_replayed, new_keys)


def _file_examples(session: Session, settings: Settings, file_id: str) -> list[TrainingExample]:
    return [TrainingExample.from_record(row) for row in read_examples(settings, get_file(session, file_id))]


def snapshot_preferences(session: Session, settings: Settings, snapshot_id: str) -> list[dict[str, Any]]:
    """Preference pairs (OpenAI's DPO lines) of the corrections in the snapshot's training split: each
    corrected answer against its approved correction, as the snapshot froze them. The validation split
    stays held out. A snapshot from before snapshots held pairs gets them from the live tables."""
    snapshot = get_snapshot(session, snapshot_id)
    pairs = load_preferences(settings, snapshot)
    if pairs is None:
        ids = {e.correction_id for e in load_examples(settings, snapshot, "train") if e.correction_id}
        pairs = preference_pairs(session, settings, correction_ids=ids)
    return [pair.to_record() for pair in pairs]
