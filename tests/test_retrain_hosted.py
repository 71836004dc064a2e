"""The hosted backend against tuneloop's own fine-tuning API, served by a separate process (uvicorn
on a free port) with its own worker: the only stand-in for OpenAI's hosted service."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from sqlmodel import Session

from registry.models import ModelVersion
from retrain.jobs import job_request, service as jobs
from retrain.jobs.files import save_upload
from retrain.models import JobStatus
from retrain.worker import Worker
from support.retrain import admin_key, chat_jsonl
from support.servers import listening_socket, wait_until
from tuneloop.app import prepare_database
from tuneloop.core.db import session_scope
from tuneloop.core.settings import Settings


@pytest.fixture
def provider(tmp_path, tiny_model_dir):
    """(base_url, api_key) of a tuneloop server and worker in other processes."""
    settings = Settings(data_dir=tmp_path / "provider", base_model=str(tiny_model_dir), admin_password="admin-password")
    engine = prepare_database(settings)
    key = admin_key(engine)
    engine.dispose()
    sock = listening_socket()
    port = sock.getsockname()[1]
    env = {**os.environ, "TUNELOOP_DATA_DIR": str(settings.data_dir), "TUNELOOP_BASE_MODEL": str(tiny_model_dir),
           "TUNELOOP_ADMIN_PASSWORD": "admin-password", "TUNELOOP_DTYPE": "float32"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "tuneloop.cli.server:asgi_app", "--factory",
                               "--fd", str(sock.fileno())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              pass_fds=[sock.fileno()])
    sock.close()
    worker = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "worker", "--no-scheduler"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"

    def ready():
        try:
            return httpx.get(f"{base_url}/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        except httpx.TransportError:
            return server.poll() is not None and pytest.fail("the provider server exited")
    wait_until(ready, timeout=120)
    yield base_url, key
    for process in (worker, server):
        process.terminate()
        process.wait(timeout=30)


def test_hosted_backend_completes_a_job_on_another_server(make_settings, tiny_model_dir, provider):
    base_url, key = provider
    settings = make_settings(base_model=str(tiny_model_dir), openai_finetune_base_url=base_url,
                             openai_finetune_api_key=key, openai_finetune_base_model="v0")
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        upload = save_upload(session, settings, filename="t.jsonl", content=chat_jsonl(4))
        job = jobs.create_job(session, settings, job_request.JobRequest(
            training_file_id=upload.id, backend="openai", hyperparameters={"n_epochs": 1, "batch_size": 2},
            suffix="hosted"), actor="t", admin=True)
        bad = jobs.create_job(session, settings, job_request.JobRequest(training_file_id=upload.id, backend="openai", model="v0"),
                              actor="t", admin=True)
    worker = Worker(settings, engine)
    assert worker.run_next_job() == job.id
    with Session(engine) as session:
        done = jobs.get_job(session, job.id)
        assert done.status == JobStatus.succeeded, done.error
        assert done.hosted_job_id and done.hosted_job_id.startswith("ftjob-")
        version = session.get(ModelVersion, done.result_version_id)
        assert version.hosted_model == "tuneloop-v1-hosted" and version.adapter_path is None
        messages = [e.message for e in jobs.list_events(session, job.id, limit=200)[0]]
        assert any(m.startswith("[hosted] Step") for m in messages)
        assert jobs.list_metrics(session, job.id)

    # A provider error fails the job with the provider's message.
    settings_bad = settings.model_copy(update={"openai_finetune_base_model": "v99"})
    assert Worker(settings_bad, engine).run_next_job() == bad.id
    with Session(engine) as session:
        failed = jobs.get_job(session, bad.id)
        assert failed.status == JobStatus.failed and "v99" in failed.error["message"], failed.error
    engine.dispose()
