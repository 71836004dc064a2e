"""`tuneloop worker`: the process that schedules and runs fine-tune jobs (beside `tuneloop serve`)."""

from __future__ import annotations

import signal

import typer

from tuneloop.core.settings import get_settings

worker_app = typer.Typer()


@worker_app.command("worker")
def worker(scheduler: bool = typer.Option(True, help="Also run the retraining scheduler and the retention purge (one worker holds them).")) -> None:
    """Run fine-tune jobs one at a time, and the scheduler. Stop with Ctrl-C."""
    from engine.backends import servable_settings
    from retrain.worker import Worker
    from tuneloop.app import prepare_database

    settings = servable_settings(get_settings())  # gates on what serves: transformers where llama.cpp cannot
    runner = Worker(settings, prepare_database(settings))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop_event.set())
    retention = (f"retention purge {settings.retention_cron!r} ({settings.retention_days} days)"
                 if settings.retention_days > 0 else "retention off")
    typer.echo(f"tuneloop worker {runner.worker_id}: waiting for jobs (scheduler {'on' if scheduler else 'off'}, "
               f"cron {settings.retrain_cron!r}, {retention if scheduler else 'no retention purge'})")
    runner.run(with_scheduler=scheduler)
