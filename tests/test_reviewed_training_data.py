"""Only reviewed data trains a version that can reach production: a staff member's job on an
uploaded file needs a second staff member's approval of the file (an admin's job is the review), the
candidate says where its data came from, a gate with no questions is not a pass, and jobs are capped."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope

LINES = "\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}?"},
                                           {"role": "assistant", "content": f"a{i}."}]}) for i in range(3))


@pytest.fixture
def api(make_settings, sqlite_url):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=sqlite_url, memory_enabled=False, max_queued_jobs_per_account=2,
                                   max_train_epochs=20, max_train_steps=100), load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        keys = {name: accounts.create_api_key(session, accounts.create_account(
            session, username=name, password="password1", role=Role.staff))[1] for name in ("alice", "bob")}
        keys["admin"] = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        client.app_ = app
        yield client
    app.state.db.dispose()


def upload(api, who: str) -> dict:
    done = api.post("/v1/files", files={"file": ("train.jsonl", io.BytesIO(LINES.encode()))},
                    data={"purpose": "fine-tune"}, headers=api.as_[who])
    assert done.status_code == 200, done.text
    return done.json()


def job(api, who: str, file_id: str, **hyper):
    return api.post("/v1/fine_tuning/jobs", json={"model": "tuneloop", "training_file": file_id,
                                                  "hyperparameters": hyper}, headers=api.as_[who])


def test_a_staff_members_file_needs_a_second_person_before_it_trains(api):
    record = upload(api, "alice")
    assert record["created_by"] == "alice" and record["approved_by"] is None
    refused = job(api, "alice", record["id"])
    assert refused.status_code == 403 and "has not been reviewed" in refused.json()["error"]["message"]
    assert api.post(f"/v1/files/{record['id']}/approve", headers=api.as_["alice"]).status_code == 403  # own file
    approved = api.post(f"/v1/files/{record['id']}/approve", headers=api.as_["bob"])
    assert approved.status_code == 200 and approved.json()["approved_by"] == "bob"
    assert job(api, "alice", record["id"]).status_code == 200


def test_an_admins_job_on_a_file_is_its_review_and_the_candidate_says_so(api):
    from registry import lifecycle as registry
    from registry.models import ModelVersion
    from retrain.jobs import provenance
    from retrain.models import FineTuneJob

    record = upload(api, "alice")
    created = job(api, "admin", record["id"])
    assert created.status_code == 200, created.text
    with session_scope(api.app_.state.db) as session:
        ftjob = session.get(FineTuneJob, created.json()["id"])
        version = registry.register_candidate(session, api.app_.state.settings, job=ftjob,
                                              parent=session.get(ModelVersion, "v0"), adapter_path="", snapshot_id=None,
                                              metrics={}, training_data=provenance.training_data(session, ftjob))
        data = registry.version_as_dict(session, version)["training_data"]
        assert data["kind"] == "uploaded_file" and data["file_id"] == record["id"]
        assert data["uploaded_by"] == "alice" and data["approved_by"] is None
        assert "admin" in data["reviewed_by"]
        assert "UPLOADED FILE" in registry.training_data_label(data)


def test_epochs_steps_and_queued_jobs_are_capped(api):
    record = upload(api, "alice")
    api.post(f"/v1/files/{record['id']}/approve", headers=api.as_["bob"])
    too_long = job(api, "alice", record["id"], n_epochs=10**12)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "hyperparameters.n_epochs"
    assert "at most 20" in too_long.json()["error"]["message"]
    too_many_steps = job(api, "alice", record["id"], min_steps=101)
    assert too_many_steps.json()["error"]["param"] == "hyperparameters.min_steps"
    assert [job(api, "alice", record["id"]).status_code for _ in range(2)] == [200, 200]
    third = job(api, "alice", record["id"])
    assert third.status_code == 429 and "limit is 2" in third.json()["error"]["message"]
    assert job(api, "bob", record["id"]).status_code == 200  # the limit is per account


@pytest.mark.parametrize("gate", ["learned", "generalises", "not_forgotten", "golden", "general"])
def test_a_gate_with_no_questions_is_not_measured_and_not_passed(make_settings, gate):
    """Never "passed"; only an empty learned gate (nothing new to check the candidate on, e.g. an
    uploaded file) blocks promotion."""
    from retrain.gates.judging import _judge

    result = _judge(gate, [], make_settings(), None)
    assert result["measured"] is False and result["passed"] is False and result["status"] == "not measured"
    assert result["blocks"] is (gate == "learned")
    if gate == "learned":
        assert "not measured" in result["reason"]

def test_a_validation_file_needs_the_same_review_as_the_training_file(api):
    """The probe's reproducer: an approved training file and the job creator's own unapproved validation file."""
    training, validation = upload(api, "alice"), upload(api, "bob")
    assert api.post(f"/v1/files/{training['id']}/approve", headers=api.as_["bob"]).status_code == 200
    body = {"model": "tuneloop", "training_file": training["id"], "validation_file": validation["id"]}
    refused = api.post("/v1/fine_tuning/jobs", json=body, headers=api.as_["bob"])
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["param"] == "validation_file" and validation["id"] in error["message"]
    assert api.post(f"/v1/files/{validation['id']}/approve", headers=api.as_["alice"]).status_code == 200
    assert api.post("/v1/fine_tuning/jobs", json=body, headers=api.as_["bob"]).status_code == 200


def test_only_the_uploader_or_an_admin_deletes_a_file(api):
    """The probe's reproducer: a staff member deleted a file an admin uploaded."""
    admins, alices = upload(api, "admin"), upload(api, "alice")
    refused = api.delete(f"/v1/files/{admins['id']}", headers=api.as_["bob"])
    assert refused.status_code == 403 and "only they or an admin" in refused.json()["error"]["message"]
    assert api.delete(f"/v1/files/{alices['id']}", headers=api.as_["bob"]).status_code == 403
    assert api.get(f"/v1/files/{admins['id']}", headers=api.as_["bob"]).status_code == 200  # still there
    assert api.delete(f"/v1/files/{alices['id']}", headers=api.as_["alice"]).json()["deleted"] is True
    assert api.delete(f"/v1/files/{admins['id']}", headers=api.as_["admin"]).json()["deleted"] is True
