"""The training child process: ``python -m retrain.jobs.child <job> - <result.json>``.

The worker (``retrain.worker``) starts one per job, so a cancel kills it within seconds and a
crash fails only that job. The child plans the job's round (``retrain.jobs.rounds.plan_round``), runs
it (``retrain.jobs.strategies.run_round``: LoRA, DPO, supervised then DPO, or a hosted job), and writes
the result file; only the worker registers a version from it. A pause request (the job's
``pause_requested``, read at each step boundary) makes it write a resumable checkpoint under the job's
checkpoint directory and report ``{"paused": {step, epoch}}`` instead; a resumed job starts a new
child that continues from there. Its settings arrive in the environment
(``TUNELOOP_WORKER_SETTINGS``), never in a file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from retrain.jobs.reporting import JobReporter
from retrain.jobs.rounds import plan_round
from retrain.jobs.strategies import Controls, run_round
from retrain.models import FineTuneJob
from retrain.trainer.pausing import TrainingPaused
from tuneloop.core.db import make_engine
from tuneloop.core.settings import Settings

SETTINGS_ENV = "TUNELOOP_WORKER_SETTINGS"


def run_job_in_child(settings: Settings, job_id: str, result_file: Path) -> None:
    """Plan and run the job's round and write the result for the worker to register."""
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
        result = run_job(settings, db, job, Controls(should_cancel, should_pause))
    except TrainingPaused as paused:
        result = {"paused": {"step": paused.step, "epoch": paused.epoch}}
    result_file.write_text(json.dumps(result))


def run_job(settings: Settings, db: Engine, job: FineTuneJob, controls: Controls) -> dict[str, Any]:
    """One job's round, planned and run in this process (what the child does; tests call it directly)."""
    with Session(db) as session:
        plan = plan_round(session, settings, job)
    return run_round(plan, JobReporter(db, job.id), controls)


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
