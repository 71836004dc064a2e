"""The hosted backend: fine-tune through OpenAI (or any server with its fine-tuning API, tuneloop
included) with the official ``openai`` client, mirroring the provider's events and metrics into our
job. The worker runs this in its child process; the result is registered as a candidate version
whose ``hosted_model`` is the provider's ``fine_tuned_model``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from registry.models import ModelVersion
from retrain.datasets import get_snapshot, snapshot_dir
from retrain.jobs import service as jobs
from retrain.jobs.files import files_dir, get_file
from retrain.models import FineTuneJob
from tuneloop.core.db import session_scope
from tuneloop.core.settings import Settings

POLL_SECONDS = 2.0


class HostedJobError(RuntimeError):
    """The provider refused or failed the job; the message is the provider's."""


def client_for(settings: Settings):
    from openai import OpenAI

    if not settings.openai_finetune_api_key and not settings.openai_finetune_base_url:
        raise HostedJobError("hosted fine-tuning is not configured: set TUNELOOP_OPENAI_FINETUNE_API_KEY "
                             "(and TUNELOOP_OPENAI_FINETUNE_BASE_URL for a compatible server)")
    return OpenAI(base_url=settings.openai_finetune_base_url or None,
                  api_key=settings.openai_finetune_api_key or "not-needed", max_retries=2)


def cancel_hosted_job(settings: Settings, hosted_job_id: str) -> None:
    client_for(settings).fine_tuning.jobs.cancel(hosted_job_id)


def run_hosted_job(settings: Settings, db: Engine, job_id: str, *, should_cancel=lambda: False) -> dict[str, Any]:
    """Upload, create, follow the provider's job to its end; returns what the worker registers."""
    import openai

    client = client_for(settings)
    with Session(db) as session:
        job = session.get(FineTuneJob, job_id)
        training, validation = _data_files(session, settings, job)

        parent = session.get(ModelVersion, job.parent_version_id)
    model = parent.hosted_model or settings.openai_finetune_base_model
    try:
        remote = _create(client, job, model, training, validation)
        with session_scope(db) as session:
            session.exec(update(FineTuneJob).where(FineTuneJob.id == job_id).values(hosted_job_id=remote.id))
            jobs.add_event(session, job_id, f"Hosted job {remote.id} created on {model}")
        remote = _follow(client, db, job_id, remote.id, should_cancel)
    except openai.APIStatusError as exc:
        raise HostedJobError(f"the hosted fine-tuning service answered {exc.status_code}: {_provider_message(exc)}") from exc
    except openai.APIConnectionError as exc:
        raise HostedJobError(f"cannot reach the hosted fine-tuning service: {exc}") from exc
    if remote.status != "succeeded":
        reason = remote.error.message if remote.error and remote.error.message else remote.status
        raise HostedJobError(f"the hosted job {remote.id} {remote.status}: {reason}")
    return {"adapter_path": None, "hosted_model": remote.fine_tuned_model, "trained_tokens": remote.trained_tokens,
            "metrics": {"hosted_job_id": remote.id}}


def _data_files(session: Session, settings: Settings, job: FineTuneJob) -> tuple[Path, Path | None]:
    if job.snapshot_id:
        snapshot = get_snapshot(session, job.snapshot_id)
        valid = snapshot_dir(settings, snapshot) / "valid.jsonl"
        return snapshot_dir(settings, snapshot) / "train.jsonl", valid if snapshot.n_valid else None

    training = files_dir(settings) / get_file(session, job.training_file_id).path
    validation = files_dir(settings) / get_file(session, job.validation_file_id).path if job.validation_file_id else None
    return training, validation


def _create(client, job: FineTuneJob, model: str, training: Path, validation: Path | None):
    uploaded = client.files.create(file=training.open("rb"), purpose="fine-tune")
    valid_id = client.files.create(file=validation.open("rb"), purpose="fine-tune").id if validation else None
    hyper = {k: v for k, v in job.hyperparameters.items() if k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    return client.fine_tuning.jobs.create(
        model=model, training_file=uploaded.id, validation_file=valid_id, suffix=job.suffix, seed=job.seed,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}})


def _follow(client, db: Engine, job_id: str, remote_id: str, should_cancel):
    seen: set[str] = set()
    while True:
        remote = client.fine_tuning.jobs.retrieve(remote_id)
        _mirror_events(client, db, job_id, remote_id, seen)
        if remote.status in ("succeeded", "failed", "cancelled"):
            return remote
        if should_cancel():
            client.fine_tuning.jobs.cancel(remote_id)
            raise HostedJobError("the worker stopped; the hosted job was cancelled")
        time.sleep(POLL_SECONDS)


def _mirror_events(client, db: Engine, job_id: str, remote_id: str, seen: set[str]) -> None:
    fresh = [e for e in client.fine_tuning.jobs.list_events(remote_id, limit=100).data if e.id not in seen]
    with session_scope(db) as session:
        for event in reversed(fresh):  # the provider lists newest first
            seen.add(event.id)
            data = event.data if isinstance(event.data, dict) else {}
            jobs.add_event(session, job_id, f"[hosted] {event.message}", level=event.level, type=event.type or "message",
                           data=data or None)
            if event.type == "metrics" and "step" in data:
                jobs.record_metrics(session, job_id, data)


def _provider_message(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return (error.get("message") if isinstance(error, dict) else None) or str(exc)
