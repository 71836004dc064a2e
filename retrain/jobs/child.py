"""The training child process: ``python -m retrain.jobs.child <job> - <result.json>``.

The worker (``retrain.worker``) starts one per job, so a cancel kills it within seconds and a
crash fails only that job. The child trains (LoRA, DPO, or supervised then DPO in one job) or follows
a hosted job, records progress and events as it goes, and writes the result file; only the worker
registers a version from it. A pause request (the job's ``pause_requested``, read at each step
boundary) makes it write a resumable checkpoint under the job's checkpoint directory and report
``{"paused": {step, epoch}}`` instead; a resumed job starts a new child that continues from there.
Its settings arrive in the environment (``TUNELOOP_WORKER_SETTINGS``), never in a file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from registry.checkpoints import checkpoint_root
from registry.models import ModelVersion
from registry.versions import version_spec
from retrain.jobs import progress, service as jobs
from retrain.jobs.files import get_file, read_examples
from retrain.jobs.hosted import run_hosted_job
from retrain.jobs.rounds import TrainingRound, plan_round, snapshot_preferences
from retrain.jobs.serving_check import check_and_retrain
from retrain.models import FineTuneJob
from retrain.trainer.checkpoints import CheckpointSaver
from retrain.trainer.config import DEFAULT_BETA, TrainConfig
from retrain.trainer.dpo import dpo_config, train_dpo
from retrain.trainer.pausing import TrainingPaused, paused_step
from retrain.trainer.train import expand_for_training, train
from tuneloop.core.db import make_engine, session_scope
from tuneloop.core.settings import Settings

SETTINGS_ENV = "TUNELOOP_WORKER_SETTINGS"


def run_job_in_child(settings: Settings, job_id: str, result_file: Path) -> None:
    """Train (or run the hosted job) and write the result for the worker to register."""
    db = make_engine(settings.database_url)
    parent_pid = os.getppid()

    def should_cancel() -> bool:
        return os.getppid() != parent_pid  # orphaned: the worker is gone

    def should_pause() -> bool:
        with Session(db) as session:
            return bool(session.exec(select(FineTuneJob.pause_requested).where(FineTuneJob.id == job_id)).one())

    with Session(db) as session:
        job = session.get(FineTuneJob, job_id)
    try:
        if job.backend == "openai":
            result = run_hosted_job(settings, db, job_id, should_cancel=should_cancel)
        else:
            result = _train_locally(settings, db, job, should_cancel, should_pause)
            _remove_resume_files(settings, job_id)
    except TrainingPaused as paused:
        result = {"paused": {"step": paused.step, "epoch": paused.epoch}}
    result_file.write_text(json.dumps(result))


def _train_locally(settings: Settings, db: Engine, job: FineTuneJob, should_cancel, should_pause) -> dict[str, Any]:
    config = TrainConfig.from_dict({"replay_fraction": settings.replay_fraction, **job.hyperparameters, "seed": job.seed})
    if (job.method or {}).get("type") == "dpo":
        return _train_dpo_locally(settings, db, job, dpo_config(config, job.hyperparameters), should_cancel,
                                  should_pause)
    then_dpo = (job.method or {}).get("type") == "supervised_then_dpo"
    with Session(db) as session:
        round_ = plan_round(session, settings, job, config)
        pairs = snapshot_preferences(session, settings, job.snapshot_id) if then_dpo else []
    train_set = round_.train
    effective, reasons = progress.planned_hyperparameters(config, len(expand_for_training(config, train_set)))
    with session_scope(db) as session:
        jobs.add_event(session, job.id, round_.describe(config))
        for reason in reasons:
            jobs.add_event(session, job.id, reason)
        if then_dpo:
            jobs.add_event(session, job.id, f"Then DPO on {len(pairs)} preference pairs of {job.snapshot_id}'s "
                           "corrections (the corrected answer against its approved correction)" if pairs else
                           "no preference pairs: DPO skipped (no correction in the snapshot corrects an answer)")
        # a job resumed after its supervised pass keeps what that pass ran (it may have stopped once learned)
        session.exec(update(FineTuneJob).where(FineTuneJob.id == job.id)
                     .values(effective_hyperparameters=job.effective_hyperparameters or effective))
    relative = f"adapters/{job.id}"
    supervised_dir = checkpoint_root(settings, job.id) / "supervised" if pairs else settings.model_store_dir / relative
    metrics, tokens = _train_supervised(settings, db, job, config, round_, effective, supervised_dir,
                                        should_cancel, should_pause)
    if not pairs:
        metrics, tokens = _check_through_serving(settings, db, job, config, round_, supervised_dir,
                                                 metrics, tokens, should_cancel)
    if pairs:
        dpo = _dpo_pass(settings, db, job, dpo_config(config, job.hyperparameters), pairs, round_,
                        supervised_dir, relative, metrics["steps"], should_cancel, should_pause)
        metrics, tokens = {**metrics, "method": "supervised_then_dpo", "dpo": dpo.metrics}, tokens + dpo.trained_tokens
    legacy = bool(train_set) and all(e.is_legacy for e in train_set)
    return {"adapter_path": relative, "metrics": metrics, "trained_tokens": tokens,
            "prompt_format": "legacy" if legacy else "chat"}


def _train_supervised(settings: Settings, db: Engine, job: FineTuneJob, config: TrainConfig,
                      round_: TrainingRound, effective: dict[str, Any], output_dir: Path, should_cancel,
                      should_pause) -> tuple[dict[str, Any], int]:
    """The supervised run (metrics, trained tokens); a job resumed in its DPO pass finds it done."""
    if (output_dir / "training_config.json").is_file():
        metrics = json.loads((output_dir / "training_config.json").read_text())["metrics"]
        return metrics, metrics["trained_tokens"]
    resume_dir = checkpoint_root(settings, job.id) / "resume"
    _announce_resume(db, job.id, resume_dir)

    def saved(epoch: int, step: int) -> None:
        with session_scope(db) as session:
            jobs.add_event(session, job.id, f"Checkpoint saved after epoch {epoch} (step {step})",
                           data={"epoch": epoch, "step": step})

    result = train(config, round_.train, round_.valid, base_dir=round_.base_dir,
                   parent_adapter_dir=round_.parent_adapter_dir, output_dir=output_dir,
                   progress_callback=_Progress(db, job.id), should_cancel=should_cancel,
                   should_pause=should_pause, resume_dir=resume_dir,
                   epoch_callback=CheckpointSaver(settings, job.id, saved),
                   provenance={"job_id": job.id, "parent_version": job.parent_version_id, "snapshot_id": job.snapshot_id,
                               "training_file": job.training_file_id}, new_keys=round_.new_keys)
    with session_scope(db) as session:
        jobs.add_event(session, job.id, _stop_message(result.metrics), data={
            k: result.metrics.get(k) for k in ("learned_at_step", "stopped_at_step", "max_steps", "stop_reason")})
    ran = {"n_epochs": result.metrics.get("n_epochs"), "total_steps": result.steps}
    if any(ran[k] is not None and ran[k] != effective[k] for k in ran):  # stopped once learned, or examples skipped
        with session_scope(db) as session:
            jobs.add_event(session, job.id, f"Ran {ran['n_epochs']} epochs, {ran['total_steps']} steps on "
                           f"{result.metrics.get('n_train')} examples")
            session.exec(update(FineTuneJob).where(FineTuneJob.id == job.id)
                         .values(effective_hyperparameters={**effective, **ran}))
    return result.metrics, result.trained_tokens


def _check_through_serving(settings: Settings, db: Engine, job: FineTuneJob, config: TrainConfig,
                           round_: TrainingRound, adapter_dir: Path, metrics: dict[str, Any], tokens: int,
                           should_cancel) -> tuple[dict[str, Any], int]:
    """The new examples asked through the serving engine, those answered wrong re-trained
    (``retrain.jobs.serving_check``); the job's events say how many. Rounds of a snapshot only: those
    are what the learned gate asks; a job on an uploaded file trains the epochs it asked for."""
    if round_.new_keys is None:
        return metrics, tokens
    new = [e for e in round_.train if e.key in round_.new_keys]
    provenance = {"job_id": job.id, "parent_version": job.parent_version_id, "snapshot_id": job.snapshot_id,
                  "training_file": job.training_file_id, "first_pass_metrics": metrics}
    check = check_and_retrain(settings, config, new, base_dir=round_.base_dir, adapter_dir=adapter_dir,
                              train_options={"progress_callback": _Progress(db, job.id, offset=metrics["steps"]),
                                             "should_cancel": should_cancel, "provenance": provenance})
    if check is None:
        return metrics, tokens
    with session_scope(db) as session:
        jobs.add_event(session, job.id, check.describe(), data=check.as_dict())
    return ({**metrics, "serving_check": check.as_dict(), "steps": metrics["steps"] + check.retrained_steps},
            tokens + check.trained_tokens)


def _dpo_pass(settings: Settings, db: Engine, job: FineTuneJob, config: TrainConfig, pairs: list[dict],
              round_: TrainingRound, supervised_dir: Path, relative: str, offset: int, should_cancel, should_pause):
    """The DPO pass of a supervised_then_dpo round: continues from (and is referenced to) the supervised
    adapter of this job; its steps are numbered on after the supervised ones."""
    beta = (job.method or {}).get("beta") or DEFAULT_BETA
    resume_dir = checkpoint_root(settings, job.id) / "resume-dpo"
    with session_scope(db) as session:
        jobs.add_event(session, job.id, f"DPO on {len(pairs)} preference pairs (beta={beta}, learning rate "
                       f"{config.dpo_learning_rate:g}), reference model: this job's supervised result")
    _announce_resume(db, job.id, resume_dir, offset)
    try:
        return train_dpo(config, beta, pairs, base_dir=round_.base_dir, parent_adapter_dir=supervised_dir,
                         output_dir=settings.model_store_dir / relative,
                         progress_callback=_Progress(db, job.id, offset=offset), should_cancel=should_cancel,
                         should_pause=should_pause, resume_dir=resume_dir,
                         provenance={"job_id": job.id, "parent_version": job.parent_version_id,
                                     "snapshot_id": job.snapshot_id, "supervised_steps": offset})
    except TrainingPaused as paused:
        raise TrainingPaused(paused.step + offset, paused.epoch) from None


def _train_dpo_locally(settings: Settings, db: Engine, job: FineTuneJob, config, should_cancel,
                       should_pause) -> dict[str, Any]:
    beta = job.method["beta"]
    with Session(db) as session:
        spec = version_spec(session.get(ModelVersion, job.parent_version_id), settings)
        rows = read_examples(settings, get_file(session, job.training_file_id))
    effective, reasons = progress.planned_hyperparameters(config, len(rows), accumulate=False)
    with session_scope(db) as session:
        jobs.add_event(session, job.id, f"DPO on {len(rows)} preference pairs (beta={beta}), reference model "
                       f"{job.parent_version_id}, continuing from its " + ("adapter" if spec.adapter_dir else "base (fresh LoRA)"))
        for reason in reasons:
            jobs.add_event(session, job.id, reason)
        session.exec(update(FineTuneJob).where(FineTuneJob.id == job.id)
                     .values(effective_hyperparameters={**effective, "beta": beta,
                                                        "learning_rate": config.dpo_learning_rate}))
    relative = f"adapters/{job.id}"
    resume_dir = checkpoint_root(settings, job.id) / "resume"
    _announce_resume(db, job.id, resume_dir)
    result = train_dpo(config, beta, rows, base_dir=spec.base_dir, parent_adapter_dir=spec.adapter_dir,
                       output_dir=settings.model_store_dir / relative, progress_callback=_Progress(db, job.id),
                       should_cancel=should_cancel, should_pause=should_pause, resume_dir=resume_dir,
                       provenance={"job_id": job.id, "parent_version": job.parent_version_id,
                                   "training_file": job.training_file_id})
    return {"adapter_path": relative, "metrics": result.metrics, "trained_tokens": result.trained_tokens,
            "prompt_format": "chat"}


def _announce_resume(db: Engine, job_id: str, resume_dir: Path, offset: int = 0) -> None:
    step = paused_step(resume_dir)
    if step is not None:
        with session_scope(db) as session:
            jobs.add_event(session, job_id, f"Resuming from the checkpoint saved at step {step + offset}",
                           data={"step": step + offset})


def _remove_resume_files(settings: Settings, job_id: str) -> None:
    """Once the adapter is written, the pause checkpoints and a supervised_then_dpo round's supervised
    adapter have served their purpose (the per-epoch checkpoints stay)."""
    for name in ("resume", "resume-dpo", "supervised"):
        shutil.rmtree(checkpoint_root(settings, job_id) / name, ignore_errors=True)


def _stop_message(metrics: dict[str, Any]) -> str:
    if metrics.get("stop_reason") == "learned":
        return (f"Stopped at step {metrics['stopped_at_step']} of at most {metrics['max_steps']}: every new example's "
                "answer was predicted right in its latest passes in a row (learned_checks)")
    learned = metrics.get("learned_at_step")
    return (f"Trained to the cap of {metrics.get('stopped_at_step')} steps; "
            + (f"every new example was learned at step {learned}" if learned else
               "some new examples' answers were still not predicted right token for token"))


class _Progress:
    """Writes each step's metrics (and a readable event) while training runs."""

    def __init__(self, db: Engine, job_id: str, offset: int = 0):
        self.db, self.job_id, self.offset = db, job_id, offset  # offset: steps of an earlier pass

    def __call__(self, row: dict[str, Any]) -> None:
        row = {**row, "step": row["step"] + self.offset, "total_steps": row["total_steps"] + self.offset}
        valid = "" if row.get("valid_loss") is None else f", validation loss={row['valid_loss']:.3f}"
        learned = "" if row.get("learned_share") is None else f", new examples learned={row['learned_share']:.0%}"
        message = f"Step {row['step']}/{row['total_steps']}: training loss={row['train_loss']:.3f}{valid}{learned}"
        with session_scope(self.db) as session:
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
