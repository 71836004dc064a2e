"""The training child process: ``python -m retrain.jobs.child <job> - <result.json>``.

The worker (``retrain.jobs.worker``) starts one per job, so a cancel kills it within seconds and a
crash fails only that job. The child trains (LoRA, DPO) or follows a hosted job, records progress
and events as it goes, and writes the result file; only the worker registers a version from it.
Its settings arrive in the environment (``TUNELOOP_WORKER_SETTINGS``), never in a file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from registry.models import ModelVersion
from registry.versions import version_spec
from retrain.jobs import service as jobs
from retrain.jobs.files import get_file, read_examples
from retrain.jobs.hosted import run_hosted_job
from retrain.models import FineTuneJob
from retrain.trainer.checkpoints import CheckpointSaver
from retrain.trainer.config import TrainConfig
from retrain.trainer.dpo import train_dpo
from retrain.trainer.rounds import plan_round
from retrain.trainer.train import train
from tuneloop.core.db import make_engine, session_scope
from tuneloop.core.settings import Settings

SETTINGS_ENV = "TUNELOOP_WORKER_SETTINGS"


def run_job_in_child(settings: Settings, job_id: str, result_file: Path) -> None:
    """Train (or run the hosted job) and write the result for the worker to register."""
    engine = make_engine(settings.database_url)
    parent_pid = os.getppid()

    def should_cancel() -> bool:
        return os.getppid() != parent_pid  # orphaned: the worker is gone

    with Session(engine) as session:
        job = session.get(FineTuneJob, job_id)
    if job.backend == "openai":
        result = run_hosted_job(settings, engine, job_id, should_cancel=should_cancel)
    else:
        result = _train_locally(settings, engine, job, should_cancel)
    result_file.write_text(json.dumps(result))


def _train_locally(settings: Settings, engine: Engine, job: FineTuneJob, should_cancel) -> dict[str, Any]:
    config = TrainConfig.from_dict({"replay_fraction": settings.replay_fraction, **job.hyperparameters, "seed": job.seed})
    if (job.method or {}).get("type") == "dpo":
        return _train_dpo_locally(settings, engine, job, config, should_cancel)
    with Session(engine) as session:
        round_ = plan_round(session, settings, job, config)
    train_set = round_.train
    effective, reasons = jobs.planned_hyperparameters(config, len(train_set))
    with session_scope(engine) as session:
        jobs.add_event(session, job.id, round_.describe(config))
        for reason in reasons:
            jobs.add_event(session, job.id, reason)
        session.exec(update(FineTuneJob).where(FineTuneJob.id == job.id).values(effective_hyperparameters=effective))
    relative = f"adapters/{job.id}"
    progress = _Progress(engine, job.id)

    def saved(epoch: int, step: int) -> None:
        with session_scope(engine) as session:
            jobs.add_event(session, job.id, f"Checkpoint saved after epoch {epoch} (step {step})",
                           data={"epoch": epoch, "step": step})

    result = train(config, train_set, round_.valid, base_dir=round_.base_dir, parent_adapter_dir=round_.parent_adapter_dir,
                   output_dir=settings.model_store_dir / relative, progress_callback=progress,
                   should_cancel=should_cancel, epoch_callback=CheckpointSaver(settings, job.id, saved),
                   provenance={"job_id": job.id, "parent_version": job.parent_version_id, "snapshot_id": job.snapshot_id,
                               "training_file": job.training_file_id}, new_keys=round_.new_keys)
    with session_scope(engine) as session:
        jobs.add_event(session, job.id, _stop_message(result.metrics), data={
            k: result.metrics.get(k) for k in ("learned_at_step", "stopped_at_step", "max_steps", "stop_reason")})
    ran = {"n_epochs": result.metrics.get("n_epochs"), "total_steps": result.steps}
    if any(ran[k] is not None and ran[k] != effective[k] for k in ran):  # stopped once learned, or examples skipped
        with session_scope(engine) as session:
            jobs.add_event(session, job.id, f"Ran {ran['n_epochs']} epochs, {ran['total_steps']} steps on "
                           f"{result.metrics.get('n_train')} examples")
            session.exec(update(FineTuneJob).where(FineTuneJob.id == job.id)
                         .values(effective_hyperparameters={**effective, **ran}))
    legacy = bool(train_set) and all(e.is_legacy for e in train_set)
    return {"adapter_path": relative, "metrics": result.metrics, "trained_tokens": result.trained_tokens,
            "prompt_format": "legacy" if legacy else "chat"}


def _train_dpo_locally(settings: Settings, engine: Engine, job: FineTuneJob, config, should_cancel) -> dict[str, Any]:
    beta = job.method["beta"]
    with Session(engine) as session:
        spec = version_spec(session.get(ModelVersion, job.parent_version_id), settings)
        rows = read_examples(settings, get_file(session, job.training_file_id))
    effective, reasons = jobs.planned_hyperparameters(config, len(rows))
    with session_scope(engine) as session:
        jobs.add_event(session, job.id, f"DPO on {len(rows)} preference pairs (beta={beta}), reference model "
                       f"{job.parent_version_id}, continuing from its " + ("adapter" if spec.adapter_dir else "base (fresh LoRA)"))
        for reason in reasons:
            jobs.add_event(session, job.id, reason)
        session.exec(update(FineTuneJob).where(FineTuneJob.id == job.id)
                     .values(effective_hyperparameters={**effective, "beta": beta}))
    relative = f"adapters/{job.id}"
    result = train_dpo(config, beta, rows, base_dir=spec.base_dir, parent_adapter_dir=spec.adapter_dir,
                       output_dir=settings.model_store_dir / relative, progress_callback=_Progress(engine, job.id),
                       should_cancel=should_cancel,
                       provenance={"job_id": job.id, "parent_version": job.parent_version_id,
                                   "training_file": job.training_file_id})
    return {"adapter_path": relative, "metrics": result.metrics, "trained_tokens": result.trained_tokens,
            "prompt_format": "chat"}


def _stop_message(metrics: dict[str, Any]) -> str:
    if metrics.get("stop_reason") == "learned":
        return (f"Stopped at step {metrics['stopped_at_step']} of at most {metrics['max_steps']}: every new example's "
                "answer was predicted right at consecutive end-of-epoch checks")
    learned = metrics.get("learned_at_step")
    return (f"Trained to the cap of {metrics.get('stopped_at_step')} steps; "
            + (f"every new example was learned at step {learned}" if learned else
               "some new examples' answers were still not predicted right token for token"))


class _Progress:
    """Writes each step's metrics (and a readable event) while training runs."""

    def __init__(self, engine: Engine, job_id: str):
        self.engine, self.job_id = engine, job_id

    def __call__(self, row: dict[str, Any]) -> None:
        valid = "" if row.get("valid_loss") is None else f", validation loss={row['valid_loss']:.3f}"
        learned = "" if row.get("learned_share") is None else f", new examples learned={row['learned_share']:.0%}"
        message = f"Step {row['step']}/{row['total_steps']}: training loss={row['train_loss']:.3f}{valid}{learned}"
        with session_scope(self.engine) as session:
            jobs.record_metrics(session, self.job_id, row)
            jobs.add_event(session, self.job_id, message, type="metrics",
                           data={k: row.get(k) for k in ("step", "total_steps", "epoch", "train_loss", "train_accuracy",
                                                         "valid_loss", "valid_mean_token_accuracy", "trained_tokens",
                                                         "learned_share", "learned_at_step")})
            session.exec(update(FineTuneJob).where(FineTuneJob.id == self.job_id)
                         .values(trained_tokens=row["trained_tokens"]))


def _child_main(argv: list[str]) -> None:
    import tuneloop  # noqa: F401  (offline environment)

    job_id, settings_path, result_path = argv
    raw = os.environ.pop(SETTINGS_ENV, "") if settings_path == "-" else Path(settings_path).read_text()
    settings = Settings(**json.loads(raw))
    logging.basicConfig(level=logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the trainer removes its staging dir
    run_job_in_child(settings, job_id, Path(result_path))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
