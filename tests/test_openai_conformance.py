"""Conformance: the routes an OpenAI fine-tuning user touches, driven with the official client; every
parsed object has all the fields the client's own models require (it would accept partial ones)."""

from __future__ import annotations

import io

import pytest

from support.openai_conformance import assert_complete
from support.retrain import chat_jsonl, job_running

USER = [{"role": "user", "content": "Do you ship to Canada?"}]


@pytest.fixture
def app(sqlite_tiny_app):
    return sqlite_tiny_app


@pytest.fixture
def client(admin_openai):
    return admin_openai


def test_serving_routes_answer_complete_objects(client):
    assert_complete(client.models.list(), client.models.retrieve("tuneloop"))
    assert_complete(client.chat.completions.create(model="tuneloop", messages=USER, max_tokens=3))
    chunks = list(client.chat.completions.create(model="tuneloop", messages=USER, max_tokens=3, stream=True,
                                                 stream_options={"include_usage": True}))
    assert_complete(*chunks)
    assert chunks[-1].usage is not None
    assert_complete(client.completions.create(model="v0", prompt="Hello", max_tokens=3))
    assert_complete(*client.completions.create(model="v0", prompt="Hello", max_tokens=3, stream=True))


def test_a_running_job_estimates_its_finish_and_cancels_into_a_complete_object(app, client):
    training = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl(40))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tuneloop", training_file=training.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    with job_running(app, client, job.id, steps=3) as worker:
        running = client.fine_tuning.jobs.retrieve(job.id)
        assert_complete(running)
        assert running.status == "running" and running.hyperparameters.n_epochs == 50
        assert running.estimated_finish is not None and running.estimated_finish > running.created_at
        cancelled = client.fine_tuning.jobs.cancel(job.id)
        assert_complete(cancelled)
        worker.join(timeout=15)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "cancelled" and done.estimated_finish is None
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert not (app.state.settings.model_store_dir / "checkpoints" / job.id).exists()
    assert_complete(*client.fine_tuning.jobs.list_events(job.id, limit=100).data)
