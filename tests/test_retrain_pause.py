"""Pause and resume of a fine-tuning job (OpenAI's ``jobs.pause`` / ``jobs.resume``), and
``integrations`` refused: the trainer continues a paused run to the same result, and the official
client pauses a job the real worker runs, resumes it, and the job ends with every step once."""

from __future__ import annotations

import io

import openai
import pytest
import torch
from safetensors.torch import load_file

from retrain.worker import Worker
from retrain.trainer.config import TrainConfig
from retrain.trainer.dpo import train_dpo
from retrain.trainer.interface import RunHooks, RunPaths
from retrain.trainer.pausing import STATE_FILE, TrainingPaused
from retrain.trainer.train import train
from feedback.examples import TrainingExample
from support.openai_conformance import assert_complete
from support.retrain import chat_jsonl, job_running


def facts(n: int) -> list[TrainingExample]:
    return [TrainingExample([{"role": "user", "content": f"What is rule {i}?"}], f"Rule {i}: {30 + i} days.")
            for i in range(n)]


def test_a_paused_run_resumes_to_the_result_of_a_run_never_paused(tiny_model_dir, tmp_path):
    config = TrainConfig(n_epochs=3, min_steps=0, batch_size=2, stop_when_learned=False, kl_anchors=2,
                         kl_batch_size=1, lora_dropout=0.1, device="cpu")
    examples = facts(6)  # 3 steps an epoch, 9 in all
    at = lambda name: RunPaths(tiny_model_dir, None, tmp_path / name)  # noqa: E731
    straight = train(config, examples, [], paths=at("straight"))

    resume_dir = tmp_path / "resume"
    with pytest.raises(TrainingPaused) as paused:  # pauses at the boundary after step 4 (mid-epoch 2)
        train(config, examples, [], paths=at("paused"),
              hooks=RunHooks(resume_dir=resume_dir, should_pause=iter([False] * 3 + [True]).__next__))
    assert (paused.value.step, paused.value.epoch) == (4, 2)
    assert (resume_dir / STATE_FILE).is_file() and (resume_dir / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "paused").exists()
    steps = []
    resumed = train(config, examples, [], paths=at("paused"),
                    hooks=RunHooks(resume_dir=resume_dir, progress=lambda row: steps.append(row["step"])))

    assert steps == [5, 6, 7, 8, 9] and resumed.steps == straight.steps == 9
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-4)
    a, b = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "straight", tmp_path / "paused"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    rows = (tmp_path / "paused" / "result.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(s) for s in range(1, 10)]


def test_a_paused_dpo_run_resumes_to_the_result_of_a_run_never_paused(tiny_model_dir, tmp_path):
    """The reference log-probabilities are the parent's on resume too (computed before the paused
    weights are loaded), so the resumed run ends where the straight one does."""
    rows = [{"input": {"messages": [{"role": "user", "content": f"Refund window {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"{30 + i} days."}],
             "non_preferred_output": [{"role": "assistant", "content": "There is none."}]} for i in range(4)]
    config = TrainConfig(n_epochs=2, min_steps=0, batch_size=1, device="cpu")  # 8 steps
    at = lambda name: RunPaths(tiny_model_dir, None, tmp_path / name)  # noqa: E731
    straight = train_dpo(config, 0.1, rows, paths=at("straight"))
    with pytest.raises(TrainingPaused) as paused:
        train_dpo(config, 0.1, rows, paths=at("paused"),
                  hooks=RunHooks(resume_dir=tmp_path / "resume", should_pause=iter([False, False, True]).__next__))
    assert paused.value.step == 3
    resumed = train_dpo(config, 0.1, rows, paths=at("paused"), hooks=RunHooks(resume_dir=tmp_path / "resume"))
    assert resumed.steps == straight.steps == 8
    a, b = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "straight", tmp_path / "paused"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-4)


def test_pause_and_resume_a_running_job_with_the_official_client(sqlite_tiny_app, admin_openai):
    app, client, settings = sqlite_tiny_app, admin_openai, sqlite_tiny_app.state.settings
    training = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl(40))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tuneloop", training_file=training.id, hyperparameters={
        "n_epochs": 2, "batch_size": 1, "stop_when_learned": False, "kl_weight": 0})
    with pytest.raises(openai.ConflictError) as conflict:  # not running yet
        client.fine_tuning.jobs.pause(job.id)
    assert conflict.value.body["type"] == "conflict_error" and "only a running job" in conflict.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.pause("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.resume("ftjob-nope")

    with job_running(app, client, job.id) as worker:
        asked = client.fine_tuning.jobs.pause(job.id)
        assert_complete(asked)
        assert asked.status == "running" and asked.to_dict()["pause_requested"]  # until the next step boundary
        worker.join(timeout=120)
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused" and paused.finished_at is None
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    [stop] = [e for e in events if e.message.startswith("Job paused at step")]
    paused_at = stop.data["step"]
    assert 2 <= paused_at < 80
    assert (settings.model_store_dir / "checkpoints" / job.id / "resume" / STATE_FILE).is_file()
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert_complete(resumed)
    assert resumed.status == "queued"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)
    assert Worker(settings, app.state.db).run_next_job() == job.id
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    metrics = client.get(f"/fine_tuning/jobs/{job.id}/metrics", cast_to=dict)["data"]
    assert [m["step"] for m in metrics] == list(range(1, 81))  # continued from the paused step, none twice
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert f"Resuming from the checkpoint saved at step {paused_at}" in messages
    assert (settings.model_store_dir / "adapters" / job.id / "adapter_model.safetensors").is_file()
    assert not (settings.model_store_dir / "checkpoints" / job.id / "resume").exists()
    assert done.hyperparameters.n_epochs == 2 and done.fine_tuned_model


def test_a_paused_job_cancels_and_leaves_no_checkpoint(sqlite_tiny_app, admin_openai):
    from retrain.jobs import service as jobs
    from retrain.models import FineTuneJob, JobStatus
    from tuneloop.core.db import session_scope

    app, client, settings = sqlite_tiny_app, admin_openai, sqlite_tiny_app.state.settings
    training = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl(4))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tuneloop", training_file=training.id)
    resume = settings.model_store_dir / "checkpoints" / job.id / "resume"
    resume.mkdir(parents=True)
    with session_scope(app.state.db) as session:  # as the worker leaves a paused job
        jobs.set_status(session, job.id, JobStatus.paused)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and not resume.parent.exists()
    with session_scope(app.state.db) as session:
        assert session.get(FineTuneJob, job.id).status == JobStatus.cancelled


def test_integrations_are_refused_and_an_empty_list_is_fine(admin_openai):
    client = admin_openai
    training = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl(4))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="tuneloop", training_file=training.id,
                                       integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    body = bad.value.body
    assert body["param"] == "integrations" and "sends nothing to outside services" in body["message"]
    assert "events" in body["message"] and "result file" in body["message"]
    for empty in ([], None):
        job = client.fine_tuning.jobs.create(model="tuneloop", training_file=training.id, integrations=empty)
        assert job.integrations == []
