"""Fine-tune jobs: create, list, get, cancel, and their events, metrics and checkpoints.

A job continues from a parent model version (default: production) on a dataset snapshot or on an
uploaded training file. Status moves ``validating_files → queued → running → succeeded | failed |
cancelled``, and ``running → paused → queued → running`` when it is paused and resumed; the worker
(retrain/worker.py) makes every move after creation except a cancel of a job that is not running
and a resume. Routes, the CLI and the scheduler all call these functions.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, func, select

from registry.checkpoints import remove_checkpoints
from registry.versions import UnknownModelError, resolve_model
from retrain.jobs.job_request import (JobConflictError, JobError, JobForbiddenError, JobLimitError, JobNotFoundError,
                                   JobRequest, check_caps, check_metadata, check_method, normalize_hyperparameters)
from retrain.models import DatasetSnapshot, FineTuneJob, JobEvent, JobMetric, JobStatus, TrainingFile
from tuneloop.core.accounts.service import audit
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
STALE_AFTER_SECONDS = 15.0  # a running job whose worker has not beaten the heartbeat for this long is orphaned
# Not finished: counts against the account's queue, keeps its files from deletion, holds off the scheduler.
ACTIVE = (JobStatus.validating_files, JobStatus.queued, JobStatus.running, JobStatus.paused)


def _check_queue(session: Session, settings: Settings, actor: str) -> None:
    waiting = session.exec(select(func.count()).select_from(FineTuneJob).where(
        FineTuneJob.created_by == actor, col(FineTuneJob.status).in_(ACTIVE))).one()
    if waiting >= settings.max_queued_jobs_per_account:
        raise JobLimitError(f"{actor} already has {waiting} jobs waiting or running (the limit is "
                            f"{settings.max_queued_jobs_per_account}); wait for one to finish or cancel one")


def _check_reviewed(record: TrainingFile, actor: str, admin: bool, param: str) -> None:
    """An uploaded file is data no second person has read: an admin's job on it is that review,
    a staff member's needs another staff member's approval of the file first."""
    if admin or record.approved_by:
        return
    raise JobForbiddenError(f"file {record.id} (uploaded by {record.created_by or 'unknown'}) has not been "
                            "reviewed: another staff member approves it with POST /v1/files/"
                            f"{record.id}/approve, or an admin creates the job", param)


def create_job(session: Session, settings: Settings, request: JobRequest, *, actor: str,
               admin: bool = False) -> FineTuneJob:
    """Queue the job ``request`` asks for, checked first (each refusal a ``JobError`` naming its field).
    ``admin``: the creator is an admin (or the operator at the CLI), whose job on an uploaded file
    counts as its review."""
    r = request
    hyper = normalize_hyperparameters(r.hyperparameters)
    check_caps(settings, hyper)
    check_metadata(r.metadata)
    method = check_method(r.method, r.training_file_id, r.backend)
    if method and r.validation_file_id:
        raise JobError("DPO jobs here measure nothing on a validation file; leave validation_file unset",
                       "validation_file")
    try:
        parent = resolve_model(session, settings, r.model or settings.production_alias)
    except UnknownModelError as exc:
        raise JobError(str(exc), "model") from exc
    if r.backend not in ("local", "openai"):
        raise JobError(f"backend must be 'local' or 'openai', not {r.backend!r}", "backend")
    if r.backend == "local" and parent.hosted_model and not parent.adapter_path:
        raise JobError(f"{parent.id} is a hosted model; continue it with backend='openai'", "model")
    if r.suffix is not None and len(r.suffix) > 64:
        raise JobError("suffix must be at most 64 characters", "suffix")
    if r.validation_file_id:  # its examples steer the run (the validation loss), so it is reviewed data too
        _check_reviewed(_require_file(session, r.validation_file_id, "validation_file"), actor, admin, "validation_file")
    snapshot_id = r.snapshot_id
    if r.training_file_id:
        _check_reviewed(_require_file(session, r.training_file_id, "training_file"), actor, admin, "training_file")
    else:
        snapshot_id = _require_snapshot(session, r.snapshot_id).id
    _check_queue(session, settings, actor)
    job = FineTuneJob(backend=r.backend, parent_version_id=parent.id, snapshot_id=snapshot_id,
                      training_file_id=r.training_file_id, validation_file_id=r.validation_file_id,
                      hyperparameters=hyper, suffix=r.suffix, seed=42 if r.seed is None else int(r.seed),
                      created_by=actor, status=JobStatus.validating_files, user_metadata=r.metadata or None,
                      method=method)
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job {job.id} from {parent.id}"
              + (f" on snapshot {snapshot_id}" if snapshot_id else f" on file {r.training_file_id}"))
    audit(session, actor=actor, action="finetune.created", object_type="finetunejob", object_id=job.id,
          parent=parent.id, snapshot=snapshot_id, training_file=r.training_file_id)
    return job


def _require_file(session: Session, file_id: str, param: str) -> TrainingFile:
    record = session.get(TrainingFile, file_id)
    if record is None:
        raise JobError(f"no uploaded file {file_id!r}; upload it with POST /v1/files (purpose fine-tune)", param)
    if record.purpose != "fine-tune":
        raise JobError(f"file {file_id!r} has purpose {record.purpose!r}, not 'fine-tune'", param)
    return record


def _require_snapshot(session: Session, snapshot_id: str | None) -> DatasetSnapshot:
    if snapshot_id:
        snapshot = session.get(DatasetSnapshot, snapshot_id)
        if snapshot is None:
            raise JobError(f"no dataset snapshot {snapshot_id!r}; list them with `tuneloop data snapshots`",
                           "snapshot_id")
    else:
        snapshot = session.exec(select(DatasetSnapshot).order_by(col(DatasetSnapshot.created_at).desc())).first()
        if snapshot is None:
            raise JobError("there is no dataset snapshot yet; approve corrections and create one first",
                           "snapshot_id")
    if snapshot.n_train == 0:
        raise JobError(f"snapshot {snapshot.id} has no training examples; approve some corrections first",
                       "snapshot_id")
    return snapshot


def get_job(session: Session, job_id: str) -> FineTuneJob:
    job = session.get(FineTuneJob, job_id)
    if job is None:
        raise JobNotFoundError(f"no fine-tuning job {job_id!r}")
    return job


def list_jobs(session: Session, *, after: str | None = None, limit: int = 20,
              metadata: dict[str, str] | None = None) -> tuple[list[FineTuneJob], bool]:
    """Newest first; ``after`` is the id of the last job of the previous page; ``metadata``: only jobs
    whose metadata holds every given pair. Returns (jobs, has_more)."""
    query = select(FineTuneJob).order_by(col(FineTuneJob.created_at).desc(), col(FineTuneJob.id).desc())
    if after:
        cursor = get_job(session, after)
        query = query.where((col(FineTuneJob.created_at) < cursor.created_at)
                            | ((col(FineTuneJob.created_at) == cursor.created_at) & (col(FineTuneJob.id) < cursor.id)))
    if metadata:  # JSON containment differs by engine; job lists are short, so filter here
        rows = [j for j in session.exec(query) if all((j.user_metadata or {}).get(k) == v for k, v in metadata.items())]
        return rows[:limit], len(rows) > limit
    rows = list(session.exec(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_job(session: Session, settings: Settings, job_id: str, *, actor: str) -> FineTuneJob:
    """A job that is not running is cancelled at once (a paused one loses its checkpoints); a running
    one is flagged, and the worker stops its training process within seconds and marks it cancelled. A
    running job whose worker is gone (no heartbeat for ``STALE_AFTER_SECONDS``) has nobody to stop it:
    it is cancelled at once."""
    job = get_job(session, job_id)
    if job.status in FINISHED:
        raise JobConflictError(f"job {job_id} already {job.status}; only a job that has not finished can be cancelled")
    if job.status == JobStatus.running and _orphaned(job):
        job.status, job.finished_at, job.cancel_requested = JobStatus.cancelled, utcnow(), True
        add_event(session, job.id, f"Job cancelled by {actor}; its worker ({job.worker_id}) had stopped "
                                   f"(last heartbeat {job.heartbeat_at}), no version was created")
    elif job.status == JobStatus.running:
        job.cancel_requested = True
        add_event(session, job.id, f"Cancellation requested by {actor}")
    else:
        if job.status == JobStatus.paused:
            remove_checkpoints(settings, job.id)
        job.status, job.finished_at = JobStatus.cancelled, utcnow()
        add_event(session, job.id, f"Job cancelled by {actor}")
    session.add(job)
    audit(session, actor=actor, action="finetune.cancelled", object_type="finetunejob", object_id=job.id)
    session.flush()
    return job


def pause_job(session: Session, job_id: str, *, actor: str) -> FineTuneJob:
    """Flag a running local job: its training process writes a resumable checkpoint at the next step
    boundary and exits, and the worker marks it ``paused``. Asking twice is asking once."""
    job = get_job(session, job_id)
    if job.status != JobStatus.running:
        raise JobConflictError(f"job {job_id} is {job.status}; only a running job can be paused"
                               + (" (resume a paused one with POST /v1/fine_tuning/jobs/{id}/resume)"
                                  if job.status == JobStatus.paused else ""))
    if job.backend != "local":
        raise JobConflictError(f"job {job_id} runs on the hosted service; only local jobs can be paused here "
                               "(cancel it instead)")
    if _orphaned(job):
        raise JobConflictError(f"job {job_id} has no live worker (last heartbeat {job.heartbeat_at}); there is "
                               "nothing to pause, cancel it instead")
    if not job.pause_requested:
        job.pause_requested = True
        session.add(job)
        add_event(session, job.id, f"Pause requested by {actor}; training stops at the next step boundary")
        audit(session, actor=actor, action="finetune.pause_requested", object_type="finetunejob", object_id=job.id)
    session.flush()
    return job


def resume_job(session: Session, job_id: str, *, actor: str) -> FineTuneJob:
    """Queue a paused job again; the worker continues it from its checkpoint, to the same total steps."""
    job = get_job(session, job_id)
    if job.status != JobStatus.paused:
        raise JobConflictError(f"job {job_id} is {job.status}; only a paused job can be resumed")
    job.status, job.pause_requested = JobStatus.queued, False
    session.add(job)
    add_event(session, job.id, f"Job resumed by {actor}; queued to continue from its checkpoint")
    audit(session, actor=actor, action="finetune.resumed", object_type="finetunejob", object_id=job.id)
    session.flush()
    return job


def _orphaned(job: FineTuneJob) -> bool:
    if job.heartbeat_at is None:
        return True
    beat = job.heartbeat_at if job.heartbeat_at.tzinfo else job.heartbeat_at.replace(tzinfo=timezone.utc)
    now = utcnow()
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    return now - beat > timedelta(seconds=STALE_AFTER_SECONDS)


def add_event(session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> JobEvent:
    event = JobEvent(job_id=job_id, message=message, level=level, type=type, data=data, created_at=utcnow())
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, job_id: str, *, after: int | str | None = None,
                limit: int = 20, oldest_first: bool = False) -> tuple[list[JobEvent], bool]:
    """Newest first like OpenAI (``after`` = id of the last event seen, paging backwards), or with
    ``oldest_first`` the events after ``after`` in order (what ``jobs follow`` streams)."""
    get_job(session, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if oldest_first:
        query = query.order_by(col(JobEvent.id))
        if after is not None:
            query = query.where(col(JobEvent.id) > _event_id(after))
    else:
        query = query.order_by(col(JobEvent.id).desc())
        if after is not None:
            query = query.where(col(JobEvent.id) < _event_id(after))
    rows = list(session.exec(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _event_id(value: int | str) -> int:
    text = str(value).removeprefix("ftevent-")
    if not text.isdigit() or int(text) >= 2**63:
        raise JobError(f"'after' must be an event id (ftevent-N), not {value!r}", "after")
    return int(text)


def record_metrics(session: Session, job_id: str, row: dict[str, Any]) -> JobMetric:
    metric = JobMetric(job_id=job_id, step=int(row["step"]), train_loss=row.get("train_loss"),
                       train_mean_token_accuracy=row.get("train_accuracy"), valid_loss=row.get("valid_loss"),
                       valid_mean_token_accuracy=row.get("valid_mean_token_accuracy"))
    session.add(metric)
    session.flush()
    return metric


def list_metrics(session: Session, job_id: str) -> list[JobMetric]:
    get_job(session, job_id)
    return list(session.exec(select(JobMetric).where(JobMetric.job_id == job_id).order_by(col(JobMetric.step))))


def set_status(session: Session, job_id: str, status: JobStatus, *, message: str | None = None,
               error: dict[str, Any] | None = None, level: str = "info", data: dict[str, Any] | None = None,
               **values: Any) -> None:
    """Move a job, stamping started/finished times, and log the move as an event."""
    stamps: dict[str, datetime] = {}
    if status == JobStatus.running:
        stamps["started_at"] = utcnow()
    if status in FINISHED:
        stamps["finished_at"] = utcnow()
    session.exec(update(FineTuneJob).where(FineTuneJob.id == job_id)
                 .values(status=status, error=error, **stamps, **values))
    add_event(session, job_id, message or f"Job {status}", level=level, data=data)


def failure(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}
