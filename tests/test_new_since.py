"""One answer to "is this example new?" (``retrain.datasets.new_since``) for the scheduler, a round's plan
and the gates. They used to disagree on a correction edited after the parent's snapshot: the scheduler
and the round counted it new (its revision's id), the gates did not (its lineage was in an ancestor's
snapshot), so the learned gate never asked the edited answer the round had just trained."""

from __future__ import annotations


import pytest
from sqlmodel import Session

from feedback.corrections import service as corrections
from registry.lifecycle import register_candidate
from registry.models import ModelVersion
from retrain.datasets import create_snapshot, new_since
from retrain.gates.items import correction_items, new_training_examples
from retrain.jobs.rounds import plan_round
from retrain.models import FineTuneJob, JobStatus
from retrain.scheduler import new_examples_since_last_success
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow


@pytest.fixture
def env(make_settings, tiny_model_dir, database_url):
    from tuneloop.app import prepare_database

    settings = make_settings(base_model=str(tiny_model_dir), database_url=database_url)
    engine = prepare_database(settings)
    yield settings, engine
    engine.dispose()


def _approve(session, settings, question, answer):
    correction = corrections.create_correction(session, settings, actor="alice", question=question, answer=answer)
    corrections.submit_correction(session, correction.id, actor="alice")
    return corrections.approve_correction(session, settings, correction.id, actor="bob")


def _version(session, settings, parent_id, snapshot_id, name):
    (settings.model_store_dir / "adapters" / name).mkdir(parents=True)
    return register_candidate(session, settings, job=None, parent=session.get(ModelVersion, parent_id),
                              adapter_path=f"adapters/{name}", snapshot_id=snapshot_id, metrics={})


def test_a_correction_edited_after_the_parents_snapshot_is_new_to_all_three(env):
    settings, engine = env
    with session_scope(engine) as session:
        _approve(session, settings, "Do you sell tents?", "Yes, three models.")
        edited = _approve(session, settings, "How long is the warranty?", "One year.")
        first = create_snapshot(session, settings, "test")
        v1 = _version(session, settings, "v0", first.id, "round1").id
        session.add(FineTuneJob(parent_version_id="v0", snapshot_id=first.id, status=JobStatus.succeeded,
                                finished_at=utcnow()))
    with session_scope(engine) as session:
        revision = corrections.update_correction(session, settings, edited.id, actor="carol", answer="Two years.")
        corrections.submit_correction(session, revision.id, actor="carol")
        corrections.approve_correction(session, settings, revision.id, actor="bob")
        second = create_snapshot(session, settings, "test")
        v2 = _version(session, settings, v1, second.id, "round2").id
    with Session(engine) as session:
        new = new_since(settings, second, [first])
        assert [(e.key, e.completion) for e in new] == [(revision.id, "Two years.")]
        # the scheduler: since the last successful job's snapshot
        assert new_examples_since_last_success(session, settings, second) == 1
        # the round continuing from v1
        job = FineTuneJob(parent_version_id=v1, snapshot_id=second.id, hyperparameters={"replay_fraction": 0.0}, seed=1)
        planned = plan_round(session, settings, job)
        assert (planned.n_new, planned.new_keys, [e.key for e in planned.train]) == (1, {revision.id}, [revision.id])
        # the gates of the candidate that round made
        candidate = session.get(ModelVersion, v2)
        assert [e.key for e in new_training_examples(session, settings, candidate)] == [revision.id]
        learned, not_forgotten = correction_items(session, settings, candidate)
        assert [item.reference for item in learned] == ["Two years."]
        assert [item.reference for item in not_forgotten] == ["Yes, three models."]


def test_nothing_is_new_since_the_same_snapshot_and_everything_since_none(env):
    settings, engine = env
    with session_scope(engine) as session:
        _approve(session, settings, "Do you sell tents?", "Yes, three models.")
        snapshot = create_snapshot(session, settings, "test")
    assert new_since(settings, snapshot, [snapshot]) == []
    assert [e.completion for e in new_since(settings, snapshot, [])] == ["Yes, three models."]
