"""`tuneloop jobs create|list|get|follow|cancel|pause|resume`: fine-tune jobs, over retrain.jobs."""

from __future__ import annotations

import json
import time

import typer

from tuneloop.cli.errors import CliError
from tuneloop.core.settings import get_settings

jobs_app = typer.Typer(help="Fine-tune jobs that continue from a model version (default: production).",
                       no_args_is_help=True)


def _database():
    from tuneloop.app import prepare_database

    return prepare_database(get_settings())


def _guard(fn, *args, **kwargs):
    from retrain.jobs.job_request import JobError, JobNotFoundError

    try:
        return fn(*args, **kwargs)
    except (JobError, JobNotFoundError) as exc:
        raise CliError(str(exc)) from exc


def _line(job) -> str:
    version = f" -> {job.result_version_id}" if job.result_version_id else ""
    return f"{job.id}  {job.status:<16} from {job.parent_version_id}{version}  {job.created_at:%Y-%m-%d %H:%M}"


@jobs_app.command("create")
def create(
    model: str = typer.Option(None, help="Version to continue from (id, name or the production alias)."),
    snapshot: str = typer.Option(None, help="Dataset snapshot id (default: the newest)."),
    n_epochs: int = typer.Option(None, help="Passes over the data (default: the trainer's)."),
    batch_size: int = typer.Option(None),
    learning_rate_multiplier: float = typer.Option(None),
    hyper: list[str] = typer.Option([], "--set", help="Any TrainConfig field, e.g. --set lora_r=8."),
    suffix: str = typer.Option(None), seed: int = typer.Option(None),
    backend: str = typer.Option("local", help="local, or openai (the hosted service in settings)."),
) -> None:
    """Queue a job; the worker (`tuneloop worker`) runs it."""
    from retrain.jobs.job_request import JobRequest
    from retrain.jobs.service import create_job
    from tuneloop.core.db import session_scope

    values = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": learning_rate_multiplier}
    for item in hyper:
        key, equals, raw = item.partition("=")
        if not key.strip() or not equals or not raw.strip():
            raise CliError(f"--set needs KEY=VALUE, e.g. --set lora_r=8 (got {item!r})")
        key, raw = key.strip(), raw.strip()
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    with session_scope(_database()) as session:
        request = JobRequest(model=model, snapshot_id=snapshot, hyperparameters=values, suffix=suffix, seed=seed,
                             backend=backend)
        job = _guard(create_job, session, get_settings(), request, actor="cli", admin=True)
        typer.echo(f"created {job.id} (status {job.status}); follow it with `tuneloop jobs follow {job.id}`")


@jobs_app.command("list")
def list_(limit: int = typer.Option(20), after: str = typer.Option(None)) -> None:
    """Newest first."""
    from sqlmodel import Session

    from retrain.jobs.service import list_jobs

    with Session(_database()) as session:
        rows, has_more = _guard(list_jobs, session, after=after, limit=limit)
        for job in rows:
            typer.echo(_line(job))
        if has_more:
            typer.echo(f"... more: --after {rows[-1].id}")


@jobs_app.command("get")
def get(job_id: str) -> None:
    """A job as JSON (OpenAI's fine_tuning.job object)."""
    from sqlmodel import Session

    from retrain.jobs.service import get_job
    from retrain.jobs.openai_routes import job_response

    with Session(_database()) as session:
        typer.echo(json.dumps(job_response(session, _guard(get_job, session, job_id)), indent=2, default=str))


@jobs_app.command("cancel")
def cancel(job_id: str) -> None:
    from retrain.jobs.service import cancel_job
    from tuneloop.core.db import session_scope

    with session_scope(_database()) as session:
        job = _guard(cancel_job, session, get_settings(), job_id, actor="cli")
        typer.echo(f"{job.id}: {'cancelled' if job.status == 'cancelled' else 'cancellation requested'}")


@jobs_app.command("pause")
def pause(job_id: str) -> None:
    """Pause a running job at its next step boundary (it keeps a checkpoint to resume from)."""
    from retrain.jobs.service import pause_job
    from tuneloop.core.db import session_scope

    with session_scope(_database()) as session:
        job = _guard(pause_job, session, job_id, actor="cli")
        typer.echo(f"{job.id}: pause requested; it pauses at the next step boundary")


@jobs_app.command("resume")
def resume(job_id: str) -> None:
    """Queue a paused job again; the worker continues it from its checkpoint."""
    from retrain.jobs.service import resume_job
    from tuneloop.core.db import session_scope

    with session_scope(_database()) as session:
        job = _guard(resume_job, session, job_id, actor="cli")
        typer.echo(f"{job.id}: {job.status}; the worker continues it from its checkpoint")


@jobs_app.command("follow")
def follow(job_id: str, poll: float = typer.Option(1.0, help="Seconds between checks.")) -> None:
    """Print events as they happen, with a progress bar over training steps, until the job ends or pauses."""
    from sqlmodel import Session
    from tqdm import tqdm

    from retrain.jobs.service import FINISHED, get_job, list_events

    db, last, bar = _database(), None, None
    while True:
        with Session(db) as session:
            events, _ = _guard(list_events, session, job_id, after=last, limit=1000, oldest_first=True)
            status = get_job(session, job_id).status
        for event in events:
            last = event.id
            data = event.data or {}
            if event.type == "metrics" and data.get("total_steps"):
                bar = bar or tqdm(total=data["total_steps"], unit="step")
                bar.n = data["step"]
                bar.set_postfix(loss=f"{data.get('train_loss', 0):.3f}")
                bar.refresh()
            else:
                (bar.write if bar else typer.echo)(f"{event.created_at:%H:%M:%S} {event.level:<5} {event.message}")
        if status in FINISHED or status == "paused":
            if bar:
                bar.close()
            typer.echo(f"{job_id}: {status}" + (f" (continue it with `tuneloop jobs resume {job_id}`)"
                                                if status == "paused" else ""))
            raise typer.Exit(0 if status in ("succeeded", "paused") else 1)
        time.sleep(poll)
