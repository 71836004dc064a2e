"""DPO through OpenAI's API (``method: {"type": "dpo"}``, OpenAI's preference format), trained by the
real worker on the tiny model: afterwards the model prefers the preferred answers more than its parent."""

from __future__ import annotations

import io
import json

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from openai import OpenAI

from retrain.worker import Worker
from support.openai_conformance import assert_complete
from support.retrain import admin_key, chat_jsonl

PAIRS = [("How long is the refund window?", "45 days from delivery.", "There is no refund window."),
         ("Which carrier ships to Norway?", "Posten ships to Norway.", "We do not ship to Norway.")]


def preference_jsonl() -> bytes:
    return "\n".join(json.dumps({
        "input": {"messages": [{"role": "user", "content": q}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}]}) for q, good, bad in PAIRS).encode()


@pytest.fixture
def app(make_settings, tiny_model_dir):
    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir)), load_model=False, mount_ui=False)
    yield app
    app.state.db.dispose()


@pytest.fixture
def client(app):
    with TestClient(app) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key=admin_key(app.state.db), http_client=http,
                     max_retries=0)


def margins(base_dir, adapter_dir=None) -> list[float]:
    """log π(preferred) − log π(non-preferred) of each pair, under the base model or base + adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.trainer.batching import encode_example
    from retrain.trainer.dpo import as_chat_pair, sequence_logprobs

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    out = []
    with torch.no_grad():
        for row in map(json.loads, preference_jsonl().decode().splitlines()):
            good, bad = (encode_example(tokenizer, e, max_seq_len=512, prompt_loss_weight=0.0) for e in as_chat_pair(row))
            scores = sequence_logprobs(model, [good, bad], tokenizer.pad_token_id, torch.device("cpu"))
            out.append(float(scores[0] - scores[1]))
    return out


def biased_answer(app, client, question: str):
    """The random tiny model answers blanks; a logit bias makes its (bad) answer visible: " never never never"."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(app.state.settings.base_model)
    token = tokenizer(" never", add_special_tokens=False)["input_ids"][0]
    app.state.runtime.start(background=False)
    try:
        return client.chat.completions.create(model="tuneloop", max_tokens=3, logit_bias={str(token): 100},
                                              messages=[{"role": "user", "content": question}])
    finally:
        app.state.runtime.stop()


def test_a_dpo_job_raises_the_preferred_answers_over_the_rejected_ones(app, client, tiny_model_dir):
    file = client.files.create(file=("prefs.jsonl", io.BytesIO(preference_jsonl())), purpose="fine-tune")
    # multiplier 250: 5e-3, what the tiny random model needs to move in 12 steps
    job = client.fine_tuning.jobs.create(model="tuneloop", training_file=file.id, suffix="dpo", method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 2, "learning_rate_multiplier": 250}}})
    assert_complete(job)
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.5
    assert Worker(app.state.settings, app.state.db).run_next_job() == job.id
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert_complete(done)
    assert done.method.dpo.hyperparameters.n_epochs == 12 and done.fine_tuned_model == "tuneloop-v1-dpo"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("DPO on 2 preference pairs (beta=0.5), reference model v0") for m in messages)
    assert done.result_files and client.files.content(done.result_files[0]).text.startswith("step,train_loss")

    adapter = app.state.settings.model_store_dir / "adapters" / job.id
    before, after = margins(tiny_model_dir), margins(tiny_model_dir, adapter)
    assert all(a > b + 0.5 for a, b in zip(after, before)), (before, after)


def test_dpo_input_is_checked(app, client):
    prefs = client.files.create(file=("prefs.jsonl", io.BytesIO(preference_jsonl())), purpose="fine-tune")
    for hyper, param in (({"beta": 0}, "method.dpo.hyperparameters.beta"),
                         ({"beta": "big"}, "method.dpo.hyperparameters.beta")):
        with pytest.raises(openai.BadRequestError) as bad:
            client.fine_tuning.jobs.create(model="v0", training_file=prefs.id,
                                           method={"type": "dpo", "dpo": {"hyperparameters": hyper}})
        assert bad.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="v0", training_file=prefs.id, validation_file=prefs.id,
                                       method={"type": "dpo"})
    assert bad.value.body["param"] == "validation_file"

    chat = client.files.create(file=("chat.jsonl", io.BytesIO(chat_jsonl(2))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="v0", training_file=chat.id, method={"type": "dpo"})
    assert Worker(app.state.settings, app.state.db).run_next_job() is None
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and "line 1: needs input.messages" in failed.error.message
    assert "preferred_output must be" in failed.error.message


def test_a_dpo_job_from_exported_preferences(app, client, tmp_path):
    """A disliked answer and its approved correction, exported as a preference pair, train a DPO job."""
    from feedback.corrections.service import create_correction
    from feedback.corrections.models import CorrectionStatus
    from feedback.preferences import preference_records, write_preference_jsonl
    from tuneloop.core.db import session_scope

    answer = biased_answer(app, client, "How long is the refund window?")
    settings = app.state.settings
    with session_scope(app.state.db) as session:
        create_correction(session, settings, actor="admin", message_id=answer.message_id,
                          answer="45 days from delivery.", status=CorrectionStatus.approved)
        create_correction(session, settings, actor="admin", question="Do you ship to Norway?",
                          answer="Yes, with Posten.", status=CorrectionStatus.approved)  # no rejected answer: left out
        records = preference_records(session, settings)
    assert answer.choices[0].message.content == " never never never"
    assert len(records) == 1
    [record] = records
    assert record["input"]["messages"][-1] == {"role": "user", "content": "How long is the refund window?"}
    assert record["preferred_output"] == [{"role": "assistant", "content": "45 days from delivery."}]
    assert record["non_preferred_output"] == [{"role": "assistant", "content": answer.choices[0].message.content}]
    path = tmp_path / "preferences.jsonl"
    assert write_preference_jsonl(records, path) == 1

    with path.open("rb") as handle:
        file = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tuneloop", training_file=file.id,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
    assert Worker(settings, app.state.db).run_next_job() == job.id
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.1


@pytest.fixture
def then_dpo_app(make_settings, tiny_model_dir):
    from tuneloop.app import create_app

    settings = make_settings(base_model=str(tiny_model_dir), retrain_method="supervised_then_dpo")
    app = create_app(settings, load_model=False, mount_ui=False)
    yield app
    app.state.db.dispose()


def test_a_scheduled_round_trains_supervised_then_dpo_into_one_adapter(then_dpo_app):
    """retrain_method=supervised_then_dpo: train-now trains the snapshot, then DPO on its corrected answer
    in the same job; one adapter, registered and gated as any round."""
    from feedback.corrections.models import CorrectionStatus
    from feedback.corrections.service import create_correction
    from tuneloop.core.db import session_scope

    app, settings = then_dpo_app, then_dpo_app.state.settings
    with TestClient(app) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key=admin_key(app.state.db), http_client=http,
                        max_retries=0)
        answer = biased_answer(app, client, "How long is the refund window?")
        with session_scope(app.state.db) as session:
            create_correction(session, settings, actor="admin", message_id=answer.message_id,
                              answer="45 days from delivery.", status=CorrectionStatus.approved)
            create_correction(session, settings, actor="admin", question="Do you ship to Norway?",
                              answer="Yes, with Posten.", status=CorrectionStatus.approved)
        job = client.post("/scheduler/train-now", cast_to=dict)
        assert job["method"]["type"] == "supervised" and job["method"]["then_dpo"]["hyperparameters"]["beta"] == 0.1
        assert Worker(settings, app.state.db).run_next_job() == job["id"]
        done = client.fine_tuning.jobs.retrieve(job["id"])
        assert done.status == "succeeded", done.error
        assert_complete(done)
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job["id"], limit=1000).data]
        steps = [m["step"] for m in client.get(f"/fine_tuning/jobs/{job['id']}/metrics", cast_to=dict)["data"]]
    assert any(m.startswith("Then DPO on 1 preference pairs of snap_") for m in messages)
    assert ("DPO on 1 preference pairs (beta=0.1, learning rate 2e-05), reference model: this job's supervised "
            "result") in messages
    adapter = settings.model_store_dir / "adapters" / job["id"]
    record = json.loads((adapter / "training_config.json").read_text())
    supervised_steps = done.to_dict()["hyperparameters_full"]["total_steps"]
    assert supervised_steps >= 1 and record["metrics"]["steps"] >= 1
    assert steps == list(range(1, supervised_steps + record["metrics"]["steps"] + 1))  # the DPO pass numbered on
    assert record["method"] == "dpo" and record["parent_adapter"].endswith(f"{job['id']}/supervised")
    assert not (settings.model_store_dir / "checkpoints" / job["id"] / "supervised").exists()
    assert done.fine_tuned_model and any(m.startswith("Gates ") for m in messages)


def test_supervised_then_dpo_without_a_corrected_answer_skips_dpo(then_dpo_app):
    from feedback.corrections.models import CorrectionStatus
    from feedback.corrections.service import create_correction
    from retrain.jobs import service as jobs
    from retrain.models import JobStatus
    from retrain.scheduler import train_now
    from tuneloop.core.db import session_scope

    app, settings = then_dpo_app, then_dpo_app.state.settings
    with session_scope(app.state.db) as session:
        for i in range(2):  # knowledge corrections: no rejected answer to pair with
            create_correction(session, settings, actor="admin", question=f"What is rule {i}?",
                              answer=f"Rule {i}: {30 + i} days.", status=CorrectionStatus.approved)
        job_id = train_now(session, settings, actor="admin").id
    assert Worker(settings, app.state.db).run_next_job() == job_id
    with session_scope(app.state.db) as session:
        assert jobs.get_job(session, job_id).status == JobStatus.succeeded
        messages = [e.message for e in jobs.list_events(session, job_id, limit=1000)[0]]
    assert messages.count("no preference pairs: DPO skipped (no correction in the snapshot corrects an answer)") == 1
    assert not any(m.startswith("DPO on") for m in messages)


def test_supervised_then_dpo_pauses_in_its_dpo_pass_and_resumes_there(then_dpo_app):
    """Paused after the supervised pass, the resumed job skips it and continues DPO at the paused step."""
    from feedback.corrections.models import CorrectionStatus
    from feedback.corrections.service import create_correction
    from registry.checkpoints import checkpoint_root
    from retrain.jobs import child, service as jobs
    from retrain.jobs.strategies import Controls
    from retrain.scheduler import train_now
    from retrain.trainer.pausing import STATE_FILE, TrainingPaused
    from tuneloop.core.db import session_scope

    app, settings = then_dpo_app, then_dpo_app.state.settings
    with TestClient(app) as http:
        answer = biased_answer(app, OpenAI(base_url="http://testserver/v1", api_key=admin_key(app.state.db),
                                           http_client=http, max_retries=0), "How long is the refund window?")
    with session_scope(app.state.db) as session:
        create_correction(session, settings, actor="admin", message_id=answer.message_id,
                          answer="45 days from delivery.", status=CorrectionStatus.approved)
        job = train_now(session, settings, actor="admin")
    supervised = checkpoint_root(settings, job.id) / "supervised"
    with pytest.raises(TrainingPaused) as paused:  # the child's own run, pausing once the DPO pass began
        child.run_job(settings, app.state.db, job, Controls(lambda: False, supervised.is_dir))
    assert (checkpoint_root(settings, job.id) / "resume-dpo" / STATE_FILE).is_file()
    result = child.run_job(settings, app.state.db, job, Controls(lambda: False, lambda: False))

    supervised_steps = result["metrics"]["steps"]
    assert paused.value.step == supervised_steps + 1  # DPO's first step boundary, numbered on
    with session_scope(app.state.db) as session:
        steps = [m.step for m in jobs.list_metrics(session, job.id)]
        messages = [e.message for e in jobs.list_events(session, job.id, limit=1000)[0]]
    assert steps == list(range(1, supervised_steps + result["metrics"]["dpo"]["steps"] + 1))
    assert f"Resuming from the checkpoint saved at step {paused.value.step}" in messages
    assert (settings.model_store_dir / result["adapter_path"] / "adapter_model.safetensors").is_file()
