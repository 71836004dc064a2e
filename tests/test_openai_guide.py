"""OpenAI's fine-tuning guide, run unchanged against tuneloop except for ``base_url`` and the key:
upload → job with a validation file and a suffix → follow the events → download ``result_files`` →
chat with ``fine_tuned_model`` → delete the model and the files. The real worker trains the tiny model."""

from __future__ import annotations

import csv
import io

import openai
import pytest

from retrain.worker import Worker
from retrain.trainer.config import TrainConfig
from support.openai_conformance import assert_complete
from support.retrain import chat_jsonl


@pytest.fixture
def app(sqlite_tiny_app):
    return sqlite_tiny_app


@pytest.fixture
def client(admin_openai):
    return admin_openai


def run_worker(app) -> str | None:
    """What `tuneloop worker` does for one job (validation, training in a child process, registration)."""
    return Worker(app.state.settings, app.state.db).run_next_job()


def test_the_fine_tuning_guide_runs_unchanged(app, client):
    training = client.files.create(file=("mydata.jsonl", io.BytesIO(chat_jsonl(4))), purpose="fine-tune")
    validation = client.files.create(file=("myvalid.jsonl", io.BytesIO(chat_jsonl(2))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, validation_file=validation.id, model="tuneloop",
                                         suffix="custom", hyperparameters={"n_epochs": 2}, metadata={"team": "support"})
    assert_complete(training, validation, job)
    assert job.metadata == {"team": "support"} and job.hyperparameters.batch_size == 4  # "auto" resolved
    assert [j.id for j in client.fine_tuning.jobs.list(limit=10).data] == [job.id]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "support"}).data] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "sales"}).data == []
    with pytest.raises(openai.ConflictError, match=job.id):
        client.files.delete(training.id)  # a job that has not finished still needs it

    assert run_worker(app) == job.id
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=100).data
    assert_complete(job, *events)
    assert any(e.type == "metrics" for e in events) and "successfully completed" in events[0].message + events[1].message
    # 4 examples at batch size 4 is one step per epoch: n_epochs was raised to reach min_steps, and says so
    min_steps = TrainConfig().min_steps
    assert job.hyperparameters.n_epochs == min_steps and job.method.supervised.hyperparameters.n_epochs == min_steps
    assert any(e.message.startswith(f"n_epochs raised from 2 to {min_steps} to reach {min_steps} optimizer steps")
               for e in events)
    assert sum(e.type == "metrics" for e in events) == min_steps  # one per step: one step per epoch

    [result_id] = job.result_files
    result = client.files.retrieve(result_id)
    assert_complete(result, client.files.list(), client.models.list(), client.fine_tuning.jobs.list())
    assert result.purpose == "fine-tune-results" and result.filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert len(rows) >= 2 and rows[0]["step"] == "1" and float(rows[-1]["train_loss"]) >= 0

    assert job.fine_tuned_model == "tuneloop-v1-custom"
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "org-tuneloop"
    completion = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                                messages=[{"role": "user", "content": "What is rule 1?"}])
    assert_complete(completion, client.models.retrieve(job.fine_tuned_model))
    assert completion.model == job.fine_tuned_model and completion.system_fingerprint == "fp_tuneloop_v1"

    # a checkpoint per epoch, the last three kept, each a model name chat accepts
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert_complete(*checkpoints)
    assert [c.step_number for c in checkpoints] == [min_steps, min_steps - 1, min_steps - 2]
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [f"{job.fine_tuned_model}:ckpt-step-{s}"
                                                                    for s in (min_steps, min_steps - 1, min_steps - 2)]
    assert all(isinstance(c.metrics.step, int) or c.metrics.step.is_integer() for c in checkpoints)
    names = [m.id for m in client.models.list().data]
    assert set(c.fine_tuned_model_checkpoint for c in checkpoints) <= set(names)
    early = client.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, max_tokens=4,
                                           messages=[{"role": "user", "content": "What is rule 1?"}])
    assert early.model == checkpoints[-1].fine_tuned_model_checkpoint
    assert early.system_fingerprint == f"fp_tuneloop_v1:ckpt-step-{min_steps - 2}"
    with pytest.raises(openai.NotFoundError, match="keeps the checkpoints"):
        client.models.retrieve(f"{job.fine_tuned_model}:ckpt-step-3")

    deleted = client.models.delete(job.fine_tuned_model)
    assert_complete(deleted)
    assert deleted.deleted and deleted.id == job.fine_tuned_model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)
    assert not (app.state.settings.model_store_dir / "checkpoints" / job.id).exists()
    for file_id in (training.id, validation.id, result_id):
        gone = client.files.delete(file_id)
        assert_complete(gone)
        assert gone.deleted
    assert client.files.list().data == []


def test_files_list_pages_filters_and_orders(app, client):
    ids = [client.files.create(file=(f"f{i}.jsonl", io.BytesIO(chat_jsonl(1))), purpose="fine-tune").id
           for i in range(3)]
    newest_first = client.files.list(limit=2)
    assert [f.id for f in newest_first.data] == ids[::-1][:2] and newest_first.has_more
    assert [f.id for f in client.files.list(limit=2, after=ids[1]).data] == [ids[0]]
    assert [f.id for f in client.files.list(order="asc").data] == ids
    assert [f.id for f in client.files.list()] == ids[::-1]  # the client's auto-pagination
    assert client.files.list(purpose="fine-tune-results").data == []
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.list(order="sideways")
    assert bad.value.body["param"] == "order"
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")


def test_production_and_base_models_cannot_be_deleted(client):
    for name in ("tuneloop", "v0"):
        with pytest.raises(openai.ConflictError):
            client.models.delete(name)
    with pytest.raises(openai.NotFoundError):
        client.models.delete("tuneloop-v9-nope")
