"""The worker process (``tuneloop worker``): owns scheduling and training.

It runs one job at a time, oldest first; later jobs wait in ``queued``. A pause is the child's own
doing (it writes a resumable checkpoint at a step boundary and exits, ``retrain.trainer.pausing``);
the worker then marks the job ``paused``, and a resumed job is queued like any other. Each job trains
in a child process (``python -m retrain.jobs.child <job> - <result.json>``, ``retrain.jobs.child``), so
a cancel stops it within seconds (the child is killed) and a crash of the child fails only that job,
with the reason.
The worker beats ``FineTuneJob.heartbeat_at`` while a job runs; a worker that starts and finds a job
``running`` with a stale heartbeat (its worker died) marks it failed. The child dies with its worker
(PR_SET_PDEATHSIG), and only the worker registers the result, so a killed worker leaves no version.

After a job succeeds the worker registers the adapter as a candidate version and runs the gates;
between jobs it runs the gate runs the API queued (``retrain.gates.runs``).
Nothing here touches the production pointer.

The child gets the settings (admin password, database URL, API keys) in its environment
(``TUNELOOP_WORKER_SETTINGS``), never in a file; its work directory is removed when it exits, and
leftovers of killed rounds (``retrain.jobs.leftovers``) are removed at start and after a failure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from registry.checkpoints import remove_checkpoints
from registry.lifecycle import register_candidate
from registry.models import ModelVersion
from retrain.gates import runs as gate_runs
from retrain.gates.execution import execute_gate_run
from retrain.jobs import service as jobs, provenance
from retrain.jobs.child import SETTINGS_ENV
from retrain.jobs.files import get_file, read_examples, save_result_file, validate_training_file
from retrain.jobs.hosted import cancel_hosted_job
from retrain.jobs.leftovers import remove_leftovers
from retrain.models import FineTuneJob, GateRun, GateRunStatus, JobStatus
from retrain.scheduler import RetrainScheduler
from retrain.trainer.dpo import preference_problems
from tuneloop.core.db import make_engine, session_scope
from tuneloop.core.errors import TuneloopError
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
STALE_AFTER_SECONDS = jobs.STALE_AFTER_SECONDS


class Worker:
    def __init__(self, settings: Settings, db: Engine | None = None, *, worker_id: str | None = None,
                 poll_seconds: float = 1.0, stale_after: float = STALE_AFTER_SECONDS):
        self.settings = settings
        self.db = db or make_engine(settings.database_url)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_seconds = poll_seconds
        self.stale_after = stale_after
        self.stop_event = threading.Event()

    def run(self, *, with_scheduler: bool = True) -> None:
        """Serve jobs until ``stop_event`` is set (SIGTERM/SIGINT in ``tuneloop worker``)."""
        scheduler = None
        if with_scheduler:
            scheduler = RetrainScheduler(self.settings, self.db, holder=self.worker_id)
            scheduler.start()
        self.recover_stale_jobs()
        self.remove_leftovers()  # other workers' running jobs are skipped
        try:
            while not self.stop_event.is_set():
                if self.run_next_job() is None and self.run_next_gate_run() is None:
                    self.stop_event.wait(self.poll_seconds)
        finally:
            if scheduler is not None:
                scheduler.shutdown()

    def recover_stale_jobs(self) -> list[str]:
        """Fail jobs left ``running`` by a worker whose heartbeat stopped."""
        cutoff = utcnow() - timedelta(seconds=self.stale_after)
        with session_scope(self.db) as session:
            stale = session.exec(select(FineTuneJob).where(
                FineTuneJob.status == JobStatus.running,
                (col(FineTuneJob.heartbeat_at) < cutoff) | (col(FineTuneJob.heartbeat_at).is_(None)))).all()
            for job in stale:
                message = (f"The worker running this job ({job.worker_id}) stopped: no heartbeat since "
                           f"{job.heartbeat_at}. Start the job again.")
                jobs.set_status(session, job.id, JobStatus.failed, message=message, level="error",
                                error=jobs.failure("worker_lost", message))
        return [job.id for job in stale]

    def remove_leftovers(self) -> None:
        try:
            remove_leftovers(self.settings, self.db)
        except OSError:
            log.warning("could not remove leftovers of earlier jobs", exc_info=True)

    def run_next_job(self) -> str | None:
        """Validate waiting jobs, then run the oldest queued one to the end. Returns its id, or None."""
        self._validate_pending()
        with session_scope(self.db) as session:
            job = session.exec(select(FineTuneJob).where(FineTuneJob.status == JobStatus.queued)
                               .order_by(col(FineTuneJob.created_at))).first()
            if job is None:
                return None
            claimed = session.exec(update(FineTuneJob).where(
                FineTuneJob.id == job.id, FineTuneJob.status == JobStatus.queued).values(
                status=JobStatus.running, started_at=utcnow(), worker_id=self.worker_id, heartbeat_at=utcnow()))
            if claimed.rowcount != 1:
                return None  # another worker took it
            jobs.add_event(session, job.id, f"Fine-tuning job started on worker {self.worker_id}")
        self._run_child(job.id)
        return job.id

    def _validate_pending(self) -> None:
        with session_scope(self.db) as session:
            pending = session.exec(select(FineTuneJob).where(FineTuneJob.status == JobStatus.validating_files)).all()
            for job in pending:
                problems: list[str] = []
                for param, file_id in (("training_file", job.training_file_id),
                                       ("validation_file", job.validation_file_id)):
                    if file_id:
                        problems += [f"{param}: {p}" for p in _file_problems(self.settings, job, get_file(session, file_id))]
                if problems:
                    message = "The training data is invalid: " + "; ".join(problems)
                    jobs.set_status(session, job.id, JobStatus.failed, message=message, level="error",
                                    error=jobs.failure("invalid_training_file", message, "training_file"))
                else:
                    jobs.set_status(session, job.id, JobStatus.queued, message="Files validated; job queued")

    # --- the training child ----------------------------------------------------------------------
    def _run_child(self, job_id: str) -> None:
        workdir = Path(tempfile.mkdtemp(prefix=f"{job_id}.", dir=_ensure(self.settings.data_dir / "work")))
        try:
            self._train_in(workdir, job_id)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _train_in(self, workdir: Path, job_id: str) -> None:
        result_file, log_file = workdir / "result.json", workdir / "child.log"
        env = {**os.environ, SETTINGS_ENV: self.settings.model_dump_json()}  # secrets stay off the disk
        with open(log_file, "wb") as log_handle:
            child = subprocess.Popen([sys.executable, "-m", "retrain.jobs.child", job_id, "-", str(result_file)],
                                     stdout=log_handle, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                     cwd=Path(__file__).resolve().parents[2], env=env)
            cancelled = self._watch(job_id, child)
        if cancelled:
            self._finish_cancelled(job_id)
        elif child.returncode == 0 and result_file.is_file():
            result = json.loads(result_file.read_text())
            if result.get("paused"):
                self._finish_paused(job_id, result["paused"])
            else:
                self._finish_succeeded(job_id, result)
        else:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-8:]
            reason = _last_error(tail) or f"the training process exited with status {child.returncode}"
            with session_scope(self.db) as session:
                jobs.set_status(session, job_id, JobStatus.failed, message=f"Training failed: {reason}", level="error",
                                error=jobs.failure("training_failed", reason))
            _remove_checkpoints(self.settings, job_id)
            self.remove_leftovers()

    def _watch(self, job_id: str, child: subprocess.Popen) -> bool:
        """Beat the heartbeat until the child ends; kill it on cancel or shutdown. True if cancelled."""
        while True:
            try:
                child.wait(timeout=HEARTBEAT_SECONDS)
                return False
            except subprocess.TimeoutExpired:
                pass
            with session_scope(self.db) as session:
                session.exec(update(FineTuneJob).where(FineTuneJob.id == job_id).values(heartbeat_at=utcnow()))
                wanted = session.get(FineTuneJob, job_id).cancel_requested
            if wanted or self.stop_event.is_set():
                child.terminate()
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                return True

    def _finish_cancelled(self, job_id: str) -> None:
        with session_scope(self.db) as session:
            job = session.get(FineTuneJob, job_id)
            reason = "cancelled" if job.cancel_requested else "the worker shut down"
            if job.hosted_job_id:
                _cancel_hosted(self.settings, job.hosted_job_id)
            status = JobStatus.cancelled if job.cancel_requested else JobStatus.failed
            error = None if job.cancel_requested else jobs.failure("worker_stopped", "The worker shut down during training.")
            jobs.set_status(session, job_id, status, message=f"Job {reason}; no version was created", error=error)
        _remove_checkpoints(self.settings, job_id)

    def _finish_paused(self, job_id: str, where: dict[str, int]) -> None:
        """The child wrote a resumable checkpoint and stopped; it stays until the job is resumed or cancelled."""
        with session_scope(self.db) as session:
            jobs.set_status(session, job_id, JobStatus.paused, pause_requested=False, data=where,
                            message=f"Job paused at step {where['step']} (epoch {where['epoch']}); a checkpoint "
                                    "to resume from was saved. Resume it with POST /v1/fine_tuning/jobs/"
                                    f"{job_id}/resume or `tuneloop jobs resume {job_id}`")

    def _finish_succeeded(self, job_id: str, result: dict[str, Any]) -> None:
        with session_scope(self.db) as session:
            job = session.get(FineTuneJob, job_id)
            parent = session.get(ModelVersion, job.parent_version_id)
            version = register_candidate(session, self.settings, job=job, parent=parent,
                                         adapter_path=result.get("adapter_path"), snapshot_id=job.snapshot_id,
                                         metrics=result.get("metrics", {}), hosted_model=result.get("hosted_model"),
                                         training_data=provenance.training_data(session, job))
            version.prompt_format = result.get("prompt_format", "chat")
            session.add(version)
            files = []
            csv_path = self.settings.model_store_dir / result["adapter_path"] / "result.csv" \
                if result.get("adapter_path") else None
            if csv_path is not None and csv_path.is_file():
                files.append(save_result_file(session, self.settings, job_id=job_id, source=csv_path).id)
            jobs.set_status(session, job_id, JobStatus.succeeded, result_version_id=version.id,
                            trained_tokens=result.get("trained_tokens"), result_files=files,
                            message=f"The job has successfully completed; candidate {version.id} ({version.name}) registered")
            candidate_id = version.id
        self._run_gates(job_id, candidate_id)

    def _run_gates(self, job_id: str, candidate_id: str) -> None:
        """Gate the new candidate now, as a gate run like any other (followed the same way)."""
        try:
            with session_scope(self.db) as session:
                run_id = gate_runs.queue_gate_run(session, candidate_id, actor=f"job {job_id}").id
                session.exec(update(GateRun).where(GateRun.id == run_id).values(
                    status=GateRunStatus.running, started_at=utcnow(), worker_id=self.worker_id))
        except TuneloopError as exc:  # e.g. a hosted model: nothing local to gate; the job stays succeeded
            with session_scope(self.db) as session:
                jobs.add_event(session, job_id, f"Gates not run for {candidate_id}: {exc}", level="warn")
            return
        run = execute_gate_run(self.settings, self.db, run_id)
        if run.status == GateRunStatus.succeeded:
            message, level = f"Gates {run.stage.split(':')[0]} for {candidate_id}", "info"
        else:
            message, level = f"Gates could not run for {candidate_id}: {run.error}", "error"
        with session_scope(self.db) as session:
            jobs.add_event(session, job_id, message, level=level)

    def run_next_gate_run(self) -> str | None:
        """Run the oldest queued gate run (queued by the API) to the end. Returns its id, or None."""
        run_id = gate_runs.claim_next(self.db, self.worker_id)
        if run_id is not None:
            execute_gate_run(self.settings, self.db, run_id)
        return run_id


def _file_problems(settings: Settings, job: FineTuneJob, record) -> list[str]:
    """A DPO job needs OpenAI's preference lines; every other job chat or prompt/completion lines."""
    if (job.method or {}).get("type") == "dpo":
        return preference_problems(read_examples(settings, record))
    return validate_training_file(settings, record)


def _remove_checkpoints(settings: Settings, job_id: str) -> None:
    """A job that did not succeed leaves no checkpoints (no version will ever name them)."""
    remove_checkpoints(settings, job_id)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _die_with_parent() -> None:
    """Linux: the kernel kills the training child when the worker dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()
    return ""


def _cancel_hosted(settings: Settings, hosted_job_id: str) -> None:
    try:
        cancel_hosted_job(settings, hosted_job_id)
    except Exception:  # noqa: BLE001
        log.warning("could not cancel hosted job %s", hosted_job_id, exc_info=True)
