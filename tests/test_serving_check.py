"""The stop rule and the learned gate agree (issue 24, item 5): before a round ends its new examples
are asked through the engine and artifact that will serve them, as the learned gate asks; the ones
answered wrong are trained further and the job's events say how many. The tiny random model trained
for one step answers every question wrong, which makes the re-training path certain."""

from __future__ import annotations

import json

import pytest

from feedback.corrections.models import CorrectionStatus
from feedback.corrections.service import create_correction
from retrain.datasets import create_snapshot, load_examples
from retrain.jobs import child, job_request, service as jobs
from retrain.jobs.strategies import Controls
from tuneloop.core.db import session_scope

SHORT_ROUND = {"n_epochs": 1, "min_steps": 1, "kl_weight": 0.0, "train_on_phrasings": False,
               "memory_examples_fraction": 0.0}


def _round(app, hyperparameters):
    settings, db = app.state.settings, app.state.db
    with session_scope(db) as session:
        for i in range(4):
            create_correction(session, settings, actor="admin", question=f"What is rule {i}?",
                              answer=f"Rule {i}: returns within {30 + i} days.", status=CorrectionStatus.approved)
        snapshot = create_snapshot(session, settings, "admin")
        job = jobs.create_job(session, settings, job_request.JobRequest(snapshot_id=snapshot.id, hyperparameters=hyperparameters),
                              actor="admin", admin=True)
        new = load_examples(settings, snapshot, "train")
    result = child.run_job(settings, db, job, Controls(lambda: False, lambda: False))
    with session_scope(db) as session:
        events = [e.message for e in jobs.list_events(session, job.id, limit=1000)[0]]
        steps = [m.step for m in jobs.list_metrics(session, job.id)]
    return result, new, events, steps


@pytest.fixture
def app_with(make_settings, tiny_model_dir):
    from tuneloop.app import create_app

    apps = []

    def _make(**overrides):
        apps.append(create_app(make_settings(base_model=str(tiny_model_dir), **overrides), load_model=False,
                               mount_ui=False))
        return apps[-1]

    yield _make
    for app in apps:
        app.state.db.dispose()


def test_examples_the_serving_engine_answers_wrong_are_retrained_into_the_rounds_adapter(app_with):
    app = app_with()
    result, new, events, steps = _round(app, {**SHORT_ROUND, "serving_retrain_steps": 3})
    check = result["metrics"]["serving_check"]
    assert check["engine"] == "transformers" and check["asked"] == len(new) >= 1
    assert check["wrong"] == len(new)  # one step of a random model answers nothing right
    assert 1 <= check["retrained_steps"] <= 3
    assert (f"Asked the {len(new)} new examples through transformers as production will serve them: {len(new)} "
            f"answered wrong and re-trained for {check['retrained_steps']} more steps (the gates ask them again)"
            ) in events
    assert steps == list(range(1, 2 + check["retrained_steps"]))  # the re-training numbered on
    adapter = app.state.settings.model_store_dir / result["adapter_path"]
    record = json.loads((adapter / "training_config.json").read_text())
    assert record["first_pass_metrics"]["steps"] == 1 and record["config"]["learned_min_prob"] == 0.9
    assert sorted(p.name for p in adapter.parent.iterdir()) == [adapter.name]  # nothing left beside it
    assert result["metrics"]["steps"] == 1 + check["retrained_steps"]


def test_the_check_asks_through_llamacpp_on_the_versions_own_gguf_when_llamacpp_serves(app_with):
    app = app_with(serving_backend="llamacpp")
    result, new, events, steps = _round(app, {**SHORT_ROUND, "serving_retrain_steps": 0})
    check = result["metrics"]["serving_check"]
    assert check["engine"] == "llamacpp" and check["wrong"] == check["asked"] == len(new)
    assert (f"Asked the {len(new)} new examples through llamacpp as production will serve them: {len(new)} answered "
            "wrong, not re-trained (serving_retrain_steps is 0)") in events
    assert steps == [1]
    # the artifact asked is the one the gates and serving load next: written once, beside the adapter
    assert (app.state.settings.model_store_dir / result["adapter_path"] / "model.gguf").is_file()
