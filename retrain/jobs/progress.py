"""What a job's run will do and how far it is: the hyperparameters a run on its examples really uses
(with the reason for each adjustment, for its events), when it should finish, and the checkpoints a
succeeded job kept. Read by the training child and the OpenAI job routes; ``retrain.jobs.service``
owns the job's lifecycle."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from registry.models import ModelVersion, VersionStatus
from registry.checkpoints import checkpoint_adapters, checkpoint_name
from retrain.jobs.service import get_job, list_metrics
from retrain.models import FineTuneJob, JobMetric, JobStatus
from retrain.trainer.config import TrainConfig
from tuneloop.core.settings import Settings


def planned_hyperparameters(config: TrainConfig, n_examples: int, *,
                            accumulate: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The hyperparameters a run on ``n_examples`` uses (``TrainConfig.run_length``: n_epochs is raised
    until the run takes min_steps optimizer steps) and the reasons for each change, for the job's events.
    ``accumulate``: False for a DPO run, which steps once per batch."""
    n_epochs, per_epoch = config.run_length(n_examples, accumulate=accumulate)
    reasons = []
    if n_epochs != config.n_epochs:
        reasons.append(f"n_epochs raised from {config.n_epochs} to {n_epochs} to reach {config.min_steps} optimizer "
                       f"steps ({n_examples} examples at batch_size {config.batch_size}: {per_epoch} "
                       f"step{'s' if per_epoch > 1 else ''} per epoch)")
    effective = {**asdict(config), "n_epochs": n_epochs, "total_steps": per_epoch * n_epochs,
                 "learning_rate": config.learning_rate, "n_examples": n_examples}
    return effective, reasons


def estimated_finish(session: Session, job: FineTuneJob) -> datetime | None:
    """For a running job: the last step's time plus the remaining steps at the measured step time
    (between the first and the last step recorded since it started, so model loading and, for a
    resumed job, the pause do not count)."""
    total = (job.effective_hyperparameters or {}).get("total_steps")
    if job.status != JobStatus.running or not total:
        return None
    since = select(JobMetric).where(JobMetric.job_id == job.id)
    if job.started_at is not None:
        since = since.where(col(JobMetric.created_at) >= job.started_at)
    first = session.exec(since.order_by(col(JobMetric.step))).first()
    last = session.exec(select(JobMetric).where(JobMetric.job_id == job.id)
                        .order_by(col(JobMetric.step).desc())).first()
    if first is None or last is None or last.step <= first.step:
        return None
    per_step = (last.created_at - first.created_at) / (last.step - first.step)
    return last.created_at + per_step * max(int(total) - last.step, 0)


def list_checkpoints(session: Session, settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """The checkpoints a succeeded job kept (the adapter after each of its last three epochs, the
    last one being the final model), newest first, each with its model name and that step's metrics.
    None once the model was deleted: a listed checkpoint is a model name a client may ask for."""
    job = get_job(session, job_id)
    if job.status != JobStatus.succeeded or not job.result_version_id:
        return []
    version = session.get(ModelVersion, job.result_version_id)
    if version.status == VersionStatus.deleted:
        return []
    metrics = {m.step: m for m in list_metrics(session, job_id)}
    found = checkpoint_adapters(settings, version)
    if not found and version.adapter_path:  # a job from before checkpoints were kept: the final adapter
        last = max(metrics) if metrics else 0
        return [{"id": f"ftckpt-{job.id.removeprefix('ftjob-')}", "job": job, "step": last,
                 "name": version.name, "metric": metrics.get(last)}]
    return [{"id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}", "job": job, "step": step,
             "name": checkpoint_name(version.name, step), "metric": metrics.get(step)}
            for step, _directory in reversed(found)]
