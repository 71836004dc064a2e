"""What one round of training runs on (``RoundPlan``): the new examples of the job's snapshot since the snapshots of
its parent's ancestry (``retrain.datasets.new_since``), plus a share of earlier ones replayed
(``retrain.trainer.replay``), or an uploaded file as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from feedback.examples import TrainingExample
from feedback.preferences import preference_pairs
from registry.checkpoints import checkpoint_root
from registry.models import ModelVersion
from registry.versions import version_spec
from retrain.datasets import ancestry_snapshots, get_snapshot, load_examples, load_preferences, new_since
from retrain.jobs.files import get_file, read_examples
from retrain.models import FineTuneJob
from retrain.trainer.config import DEFAULT_BETA, TrainConfig, dpo_config
from retrain.trainer.replay import select_for_round
from tuneloop.core.settings import Settings


METHODS = ("supervised", "supervised_then_dpo", "dpo", "hosted")


@dataclass
class RoundPlan:
    """Everything one job's round runs on, decided before the first step: where it starts from, which
    examples (new and replayed) or preference pairs it trains on, how (``method``, with its ``config``),
    and where it writes. ``retrain.jobs.strategies.run_round`` runs it."""

    job: FineTuneJob
    settings: Settings
    method: str  # one of METHODS
    config: TrainConfig | None = None  # None for a hosted job: the provider trains
    parent_id: str = ""
    base_dir: Path | None = None
    parent_adapter_dir: Path | None = None
    train: list[TrainingExample] = field(default_factory=list)
    valid: list[TrainingExample] = field(default_factory=list)
    n_new: int = 0
    n_replayed: int = 0
    new_keys: set[str] | None = None  # ``TrainingExample.key`` of the new examples (None: all are new, e.g. a file)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # preference pairs, OpenAI's DPO lines
    beta: float = DEFAULT_BETA

    @property
    def relative_adapter(self) -> str:
        """The adapter's path under the model store, as the registered version records it."""
        return f"adapters/{self.job.id}"

    @property
    def adapter_dir(self) -> Path:
        return self.settings.model_store_dir / self.relative_adapter

    @property
    def checkpoints(self) -> Path:
        return checkpoint_root(self.settings, self.job.id)

    @property
    def new_examples(self) -> list[TrainingExample]:
        return [e for e in self.train if self.new_keys is None or e.key in self.new_keys]

    def provenance(self, **extra: Any) -> dict[str, Any]:
        """What training_config.json records about where the adapter came from."""
        job = self.job
        return {"job_id": job.id, "parent_version": job.parent_version_id, "snapshot_id": job.snapshot_id,
                "training_file": job.training_file_id, **extra}

    def describe(self) -> str:
        """The job event that says what this round trains."""
        config = self.config
        return (f"Training {len(self.train)} examples ({self.n_new} new, {self.n_replayed} replayed), "
                f"{len(self.valid)} validation, {config.n_epochs} epochs (at least {config.min_steps} steps), "
                f"continuing from {self.parent_id}" + (" (its adapter)" if self.parent_adapter_dir else " (fresh LoRA)")
                + (f"; the parent first answers {config.kl_anchors} general prompts for the KL penalty"
                   if config.kl_weight > 0 else ""))


def method_of(job: FineTuneJob) -> str:
    if job.backend == "openai":
        return "hosted"
    kind = (job.method or {}).get("type")
    return kind if kind in ("dpo", "supervised_then_dpo") else "supervised"


def plan_round(session: Session, settings: Settings, job: FineTuneJob) -> RoundPlan:
    """The plan of ``job``'s round: base model, parent adapter, config, and the examples (new +
    replayed) or preference pairs it trains on."""
    method = method_of(job)
    if method == "hosted":
        return RoundPlan(job, settings, method)
    config = TrainConfig.from_dict({"replay_fraction": settings.replay_fraction, **job.hyperparameters,
                                    "seed": job.seed})
    parent = session.get(ModelVersion, job.parent_version_id)
    spec = version_spec(parent, settings)
    plan = RoundPlan(job, settings, method, config, parent.id, spec.base_dir, spec.adapter_dir)
    if method == "dpo":  # an uploaded preference file, trained as it is
        plan.config = dpo_config(config, job.hyperparameters)
        plan.pairs, plan.beta = read_examples(settings, get_file(session, job.training_file_id)), job.method["beta"]
        return plan
    if job.snapshot_id:
        snapshot = get_snapshot(session, job.snapshot_id)
        current, plan.valid = load_examples(settings, snapshot, "train"), load_examples(settings, snapshot, "valid")
        # same data as the parent: train on all of it
        earlier = [] if parent.snapshot_id == snapshot.id else ancestry_snapshots(session, parent)
        plan.new_keys = {e.key for e in new_since(settings, snapshot, earlier)}
        seen = {e.key for e in current} - plan.new_keys
        plan.train, plan.n_new, plan.n_replayed = select_for_round(current, seen, replay_fraction=config.replay_fraction,
                                                                   seed=config.seed)
    else:
        plan.train = _file_examples(session, settings, job.training_file_id)
        plan.valid = _file_examples(session, settings, job.validation_file_id) if job.validation_file_id else []
        plan.n_new = len(plan.train)
    if method == "supervised_then_dpo":
        plan.pairs = snapshot_preferences(session, settings, job.snapshot_id)
        plan.beta = (job.method or {}).get("beta") or DEFAULT_BETA
    return plan


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
