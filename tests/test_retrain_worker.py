"""The worker as a separate process (kill -9 mid-run fails the job, registers nothing) and the
scheduler (threshold, one scheduler among competing workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from sqlmodel import Session

from registry.models import ModelVersion
from registry.versions import production_version
from retrain.jobs import job_request, service as jobs
from retrain.models import JobStatus
from retrain.scheduler import acquire_lease, state_as_dict, tick, train_now
from retrain.worker import Worker
from support.retrain import chat_jsonl
from support.servers import wait_until
from tuneloop.app import prepare_database
from tuneloop.core.db import session_scope


def test_killing_the_worker_mid_run_fails_the_job_and_registers_nothing(make_settings, tiny_model_dir):
    from retrain.jobs.files import save_upload

    settings = make_settings(base_model=str(tiny_model_dir))
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        upload = save_upload(session, settings, filename="t.jsonl", content=chat_jsonl(40))
        job = jobs.create_job(session, settings, job_request.JobRequest(
            training_file_id=upload.id, hyperparameters={"n_epochs": 50, "batch_size": 1}), actor="t", admin=True)
    env = {**os.environ, "TUNELOOP_DATA_DIR": str(settings.data_dir), "TUNELOOP_DATABASE_URL": settings.database_url,
           "TUNELOOP_BASE_MODEL": str(tiny_model_dir), "TUNELOOP_ADMIN_PASSWORD": "admin-password"}
    worker = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "worker", "--no-scheduler"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def trained_a_step():
            with Session(engine) as session:
                return jobs.list_metrics(session, job.id)
        wait_until(trained_a_step, timeout=300)  # a cold worker imports torch, then trains: slow on a busy machine
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    with Session(engine) as session:
        assert jobs.get_job(session, job.id).status == JobStatus.running  # until someone notices
    survivor = Worker(settings, engine, stale_after=1.0)
    assert wait_until(survivor.recover_stale_jobs, timeout=30) == [job.id]
    with Session(engine) as session:
        failed = jobs.get_job(session, job.id)
        assert failed.status == JobStatus.failed and failed.error["code"] == "worker_lost"
        assert session.get(ModelVersion, "v1") is None
        assert production_version(session).id == "v0"
    assert not (settings.model_store_dir / "adapters" / job.id).exists()
    engine.dispose()


def approve(session, settings, n: int, start: int = 0) -> None:
    from feedback.corrections.service import create_correction
    from feedback.corrections.models import CorrectionStatus

    for i in range(start, start + n):
        create_correction(session, settings, actor="admin", question=f"What is the rule for item {i}?",
                          answer=f"Item {i} can be returned within {10 + i} days.", status=CorrectionStatus.approved)


def test_scheduler_waits_for_enough_new_examples_and_starts_one_job(make_settings, tiny_model_dir):
    settings = make_settings(base_model=str(tiny_model_dir), retrain_min_new_examples=3)
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        approve(session, settings, 2)
    assert tick(settings, engine, "worker-a") == "skipped: 2 new examples, need 3"
    assert tick(settings, engine, "worker-b").startswith("not the scheduler")
    with session_scope(engine) as session:
        approve(session, settings, 1, start=2)
    decision = tick(settings, engine, "worker-a")
    assert decision.startswith("started ftjob-") and "3 new examples" in decision
    assert tick(settings, engine, "worker-a").startswith("skipped: job ftjob-")  # never two at once
    with Session(engine) as session:
        started, has_more = jobs.list_jobs(session)
        assert len(started) == 1 and not has_more
        state = state_as_dict(session, settings)
        assert state["holder"] == "worker-a" and state["last_decision"].startswith("skipped: job")
    engine.dispose()


def test_exactly_one_of_competing_schedulers_gets_the_lease(make_settings):
    settings = make_settings()
    engine = prepare_database(settings)
    barrier, results = threading.Barrier(4), {}

    def compete(name):
        barrier.wait()
        results[name] = acquire_lease(engine, name)

    threads = [threading.Thread(target=compete, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, won in results.items() if won]
    assert len(winners) == 1
    assert acquire_lease(engine, winners[0])  # renewing keeps it
    assert not any(acquire_lease(engine, f"w{i}") for i in range(4) if f"w{i}" != winners[0])
    assert acquire_lease(engine, "late", seconds=60) is False
    engine.dispose()


def test_train_now_and_empty_snapshots(make_settings, tiny_model_dir):
    settings = make_settings(base_model=str(tiny_model_dir))
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        try:
            train_now(session, settings, actor="admin")
            raise AssertionError("an empty snapshot must not start a job")
        except job_request.JobError as exc:
            assert "no training examples" in str(exc)
    with session_scope(engine) as session:
        approve(session, settings, 2)
        job = train_now(session, settings, actor="admin")
        assert job.snapshot_id and job.status == JobStatus.validating_files
    engine.dispose()
