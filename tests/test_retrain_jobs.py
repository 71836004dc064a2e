"""Fine-tune jobs through the official openai client against the in-process app, run by the real
worker (training in its child process on the tiny model)."""

from __future__ import annotations

import io
import threading

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlmodel import Session

from registry.models import ModelVersion
from retrain.jobs import job_request, service as jobs
from retrain.models import JobStatus
from retrain.worker import Worker
from support.retrain import admin_key, chat_jsonl
from support.servers import wait_until


@pytest.fixture
def app(make_settings, tiny_model_dir):
    from tuneloop.app import create_app

    settings = make_settings(base_model=str(tiny_model_dir), max_upload_bytes=20_000)
    app = create_app(settings, load_model=False, mount_ui=False)
    yield app
    app.state.db.dispose()


@pytest.fixture
def api(app):
    with TestClient(app) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key=admin_key(app.state.db), http_client=http, max_retries=0)


def upload(api, content: bytes, name: str = "train.jsonl"):
    return api.files.create(file=(name, io.BytesIO(content)), purpose="fine-tune")


def job_status(app, job_id):
    with Session(app.state.db) as session:
        return jobs.get_job(session, job_id).status


def test_fine_tune_through_the_openai_api_creates_a_candidate(app, api):
    training = upload(api, chat_jsonl(4))
    assert training.object == "file" and training.purpose == "fine-tune" and training.bytes > 0
    assert api.files.retrieve(training.id).id == training.id
    job = api.fine_tuning.jobs.create(model="v0", training_file=training.id, suffix="acme", seed=7,
                                      method={"type": "supervised", "supervised": {"hyperparameters": {
                                          "n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 2.0, "min_steps": 0}}})
    assert job.status == "validating_files" and job.id.startswith("ftjob-") and job.seed == 7
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 2
    assert job.model_extra["hyperparameters_full"]["seed"] == 7  # before it starts too (the probe saw 42)

    assert Worker(app.state.settings, app.state.db).run_next_job() == job.id

    done = api.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == "tuneloop-v1-acme" and done.trained_tokens > 0 and done.finished_at
    messages = [e.message for e in api.fine_tuning.jobs.list_events(job.id, limit=100).data][::-1]
    assert messages[0].startswith("Created fine-tuning job")
    assert any(m.startswith("Step 2/2: training loss=") for m in messages)
    assert "successfully completed" in " ".join(messages)
    checkpoints = api.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints[0].fine_tuned_model_checkpoint == "tuneloop-v1-acme:ckpt-step-2"
    assert checkpoints[0].step_number == 2 and checkpoints[0].metrics.step == 2
    page = api.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [job.id] and page.has_more is False
    with Session(app.state.db) as session:
        version = session.get(ModelVersion, "v1")
        assert version.status in ("candidate", "approved", "rejected") and version.parent_id == "v0" and version.job_id == job.id
        assert (app.state.settings.model_store_dir / version.adapter_path / "adapter_model.safetensors").is_file()
        assert session.get(ModelVersion, "v0").status == "production"  # nothing touches production
    with pytest.raises(openai.ConflictError, match="already succeeded"):
        api.fine_tuning.jobs.cancel(job.id)
    # a deleted model leaves no checkpoint a client could still ask for (the probe saw its name listed)
    assert api.models.delete("tuneloop-v1-acme").deleted is True
    assert api.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert not (app.state.settings.model_store_dir / "checkpoints" / job.id).exists()


def test_cancel_stops_a_running_job_within_seconds(app, api):
    training = upload(api, chat_jsonl(40))
    job = api.fine_tuning.jobs.create(model="tuneloop", training_file=training.id,
                                      hyperparameters={"n_epochs": 50, "batch_size": 1})
    worker = Worker(app.state.settings, app.state.db)
    thread = threading.Thread(target=worker.run_next_job)
    thread.start()
    try:
        wait_until(lambda: any(e.type == "metrics" for e in api.fine_tuning.jobs.list_events(job.id).data))
        assert api.fine_tuning.jobs.retrieve(job.id).status == "running"
        api.fine_tuning.jobs.cancel(job.id)
        thread.join(timeout=15)
        assert not thread.is_alive()
    finally:
        worker.stop_event.set()
        thread.join()
    assert api.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with Session(app.state.db) as session:
        assert session.get(ModelVersion, "v1") is None
    assert not (app.state.settings.model_store_dir / "adapters" / job.id).exists()


def test_bad_requests_get_openai_errors(app, api):
    with pytest.raises(openai.BadRequestError, match="not JSONL"):
        upload(api, b"this is not json\n")
    with pytest.raises(openai.APIStatusError) as too_big:
        upload(api, chat_jsonl(200))
    assert too_big.value.status_code == 413
    good = upload(api, chat_jsonl(2))
    for hyper, message in [({"n_epochs": 0}, "n_epochs must be at least 1"),
                           ({"learning_rate_multiplier": -1}, "learning_rate_multiplier must be greater than 0"),
                           ({"lora_r": 0}, "lora_r"), ({"kl_weight": -1}, "kl_weight must be 0 or more")]:
        with pytest.raises(openai.BadRequestError, match=message):
            api.fine_tuning.jobs.create(model="v0", training_file=good.id, hyperparameters=hyper)
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        api.fine_tuning.jobs.create(model="v99", training_file=good.id)
    with pytest.raises(openai.BadRequestError, match="no uploaded file"):
        api.fine_tuning.jobs.create(model="v0", training_file="file-nope")
    with pytest.raises(openai.NotFoundError):
        api.fine_tuning.jobs.retrieve("ftjob-nope")
    with Session(app.state.db) as session:
        with pytest.raises(job_request.JobError, match="no dataset snapshot 'snap_nope'"):
            jobs.create_job(session, app.state.settings, job_request.JobRequest(snapshot_id="snap_nope"), actor="t")
        with pytest.raises(job_request.JobError, match="no dataset snapshot yet"):
            jobs.create_job(session, app.state.settings, job_request.JobRequest(), actor="t")


def test_an_invalid_training_file_fails_the_job_with_reasons(app, api):
    bad = upload(api, b'{"messages": [{"role": "user", "content": "no answer"}]}\n{"prompt": "x"}\n')
    job = api.fine_tuning.jobs.create(model="v0", training_file=bad.id)
    assert Worker(app.state.settings, app.state.db).run_next_job() is None
    failed = api.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert "1, 2" in failed.error.message and "assistant" in failed.error.message
    with Session(app.state.db) as session:
        assert jobs.get_job(session, job.id).status == JobStatus.failed
