"""Nothing secret or half-written is left behind: a job's settings reach the child without touching
the disk, leftovers of killed rounds are removed, a failed train-now leaves no snapshot files, and a
running job whose worker died can be cancelled."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from retrain.jobs import job_request, service as jobs
from retrain.models import DatasetSnapshot, JobStatus
from support.retrain import chat_jsonl
from tuneloop.app import prepare_database
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow

SECRET = "admin-password-7f3a"


def files_holding(root, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.name.endswith((".db", ".db-wal"))
            and needle.encode() in p.read_bytes()]


def test_a_job_leaves_no_secret_and_no_work_dir(make_settings, tiny_model_dir):
    from retrain.jobs.files import save_upload
    from retrain.worker import Worker

    settings = make_settings(base_model=str(tiny_model_dir), admin_password=SECRET, openai_finetune_api_key="sk-x9")
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        upload = save_upload(session, settings, filename="t.jsonl", content=chat_jsonl(4))
        job = jobs.create_job(session, settings, job_request.JobRequest(training_file_id=upload.id, hyperparameters={
            "n_epochs": 1, "min_steps": 1, "kl_weight": 0.0}), actor="admin", admin=True)
    assert Worker(settings, engine).run_next_job() == job.id
    with Session(engine) as session:
        assert jobs.get_job(session, job.id).status == JobStatus.succeeded
    assert list((settings.data_dir / "work").iterdir()) == []
    assert files_holding(settings.data_dir, SECRET) == [] and files_holding(settings.data_dir, "sk-x9") == []
    engine.dispose()


def test_leftovers_of_killed_rounds_are_removed_and_live_data_kept(make_settings):
    from retrain.jobs.leftovers import remove_leftovers

    settings = make_settings()
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        session.add(DatasetSnapshot(id="snap_kept", content_hash="h", path="snap_kept", n_train=1))
    leftovers = [settings.data_dir / "work" / "ftjob-dead.x1", settings.model_store_dir / "adapters" / ".ftjob-dead.partial-42",
                 settings.datasets_dir / ".snap_half.abc", settings.datasets_dir / "snap_never_committed"]
    kept = [settings.datasets_dir / "snap_kept", settings.model_store_dir / "adapters" / "ftjob-done"]
    for folder in leftovers + kept:
        folder.mkdir(parents=True)
        (folder / "x.json").write_text("{}")
    removed = remove_leftovers(settings, engine, min_age_seconds=0)
    assert sorted(removed) == sorted(leftovers)
    assert all(not p.exists() for p in leftovers) and all(p.exists() for p in kept)
    # Young leftovers may still be being written by another process: left alone by default.
    leftovers[2].mkdir()
    assert remove_leftovers(settings, engine) == [] and leftovers[2].exists()
    engine.dispose()


def test_a_failed_train_now_leaves_no_snapshot_files(make_settings):
    from retrain.scheduler import train_now

    settings = make_settings()
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        try:
            train_now(session, settings, actor="admin")
            raise AssertionError("an empty snapshot must not start a job")
        except job_request.JobError as exc:
            assert "no training examples" in str(exc)
    assert not settings.datasets_dir.exists() or list(settings.datasets_dir.iterdir()) == []
    engine.dispose()


def test_cancel_of_a_job_whose_worker_died_marks_it_cancelled(make_settings):
    from retrain.jobs.files import save_upload

    settings = make_settings()
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        upload = save_upload(session, settings, filename="t.jsonl", content=chat_jsonl(4))
        orphan, alive = (jobs.create_job(session, settings, job_request.JobRequest(training_file_id=upload.id), actor="admin",
                                         admin=True)
                         for _ in range(2))
        for job, beat in ((orphan, utcnow() - timedelta(minutes=2)), (alive, utcnow())):
            job.status, job.worker_id, job.heartbeat_at = JobStatus.running, "host:123", beat
            session.add(job)
    with session_scope(engine) as session:
        assert jobs.cancel_job(session, settings, orphan.id, actor="admin").status == JobStatus.cancelled
        still = jobs.cancel_job(session, settings, alive.id, actor="admin")
        assert still.status == JobStatus.running and still.cancel_requested  # its worker stops it
    with Session(engine) as session:
        events = [e.message for e in jobs.list_events(session, orphan.id, limit=10)[0]]
        assert any("had stopped" in m for m in events)
    engine.dispose()
