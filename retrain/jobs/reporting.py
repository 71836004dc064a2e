"""What a running job tells the world: its events, per-step metrics and effective hyperparameters.

One ``JobReporter`` per job, handed to the round (``retrain.jobs.strategies``), so training decisions
and event writes are not woven together: a strategy decides, the reporter writes (each write its own
short transaction, so the API sees progress while the job runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine

from retrain.jobs import service as jobs
from retrain.models import FineTuneJob
from retrain.trainer.pausing import paused_step
from tuneloop.core.db import session_scope


class JobReporter:
    def __init__(self, db: Engine, job_id: str):
        self.db, self.job_id = db, job_id

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        with session_scope(self.db) as session:
            jobs.add_event(session, self.job_id, message, data=data)

    def events(self, messages: list[str]) -> None:
        with session_scope(self.db) as session:
            for message in messages:
                jobs.add_event(session, self.job_id, message)

    def effective_hyperparameters(self, values: dict[str, Any]) -> None:
        """What the run really uses (epochs raised to reach min_steps, a run stopped once learned, ...)."""
        with session_scope(self.db) as session:
            session.exec(update(FineTuneJob).where(FineTuneJob.id == self.job_id)
                         .values(effective_hyperparameters=values))

    def steps(self, offset: int = 0) -> "StepProgress":
        """The trainer's progress callback; ``offset``: steps of an earlier pass of the same job."""
        return StepProgress(self.db, self.job_id, offset)

    def checkpoint_saved(self, epoch: int, step: int) -> None:
        self.event(f"Checkpoint saved after epoch {epoch} (step {step})", {"epoch": epoch, "step": step})

    def resuming(self, resume_dir: Path, offset: int = 0) -> None:
        """Say so when the pass continues from a pause checkpoint in ``resume_dir``."""
        step = paused_step(resume_dir)
        if step is not None:
            self.event(f"Resuming from the checkpoint saved at step {step + offset}", {"step": step + offset})


class StepProgress:
    """Writes each step's metrics (and a readable event) while training runs."""

    def __init__(self, db: Engine, job_id: str, offset: int = 0):
        self.db, self.job_id, self.offset = db, job_id, offset

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
