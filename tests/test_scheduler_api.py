"""The scheduler over HTTP: its state (next run, last decision) for staff, "train now" for admins only,
and a clear 400 (with nothing written) when there is nothing to train on."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from retrain.models import DatasetSnapshot, FineTuneJob
from retrain.scheduler import RetrainScheduler, tick
from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope


@pytest.fixture
def app(make_settings, tiny_model_dir, database_url):
    from tuneloop.app import create_app

    settings = make_settings(base_model=str(tiny_model_dir), database_url=database_url,
                             retrain_cron="0 3 * * *", retrain_min_new_examples=20)
    app = create_app(settings, load_model=False, mount_ui=False)
    yield app
    app.state.db.dispose()


@pytest.fixture
def http(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def headers(app) -> dict[str, dict[str, str]]:
    result = {"anonymous": {}}
    with session_scope(app.state.db) as session:
        for name, role in (("boss", Role.admin), ("helper", Role.staff)):
            account = accounts.create_account(session, username=name, password="password-123", role=role)
            session.flush()
            result[role.value] = {"Authorization": f"Bearer {accounts.create_api_key(session, account)[1]}"}
    return result


def approve(app, n: int) -> None:
    from feedback.corrections.service import create_correction
    from feedback.corrections.models import CorrectionStatus

    with session_scope(app.state.db) as session:
        for i in range(n):
            create_correction(session, app.state.settings, actor="boss", question=f"Is stove {i} allowed on planes?",
                              answer=f"Stove {i} may fly only without fuel.", status=CorrectionStatus.approved)


def rows(app, table) -> list:
    with Session(app.state.db) as session:
        return list(session.exec(select(table)).all())


def test_state_shows_the_next_run_and_the_last_decision(app, http, headers):
    assert http.get("/v1/scheduler").status_code == 401
    fresh = http.get("/v1/scheduler", headers=headers["staff"]).json()
    assert fresh["object"] == "scheduler" and fresh["cron"] == "0 3 * * *" and fresh["min_new_examples"] == 20
    assert fresh["next_run_at"] is None and fresh["last_decision"] == ""

    scheduler = RetrainScheduler(app.state.settings, app.state.db, holder="worker-a")
    scheduler.start()  # takes the lease and records when the cron fires next
    try:
        expected = scheduler._scheduler.get_job("retrain").next_run_time
        approve(app, 7)
        assert tick(app.state.settings, app.state.db, "worker-a") == "skipped: 7 new examples, need 20"
    finally:
        scheduler.shutdown()
    state = http.get("/v1/scheduler", headers=headers["staff"]).json()
    next_run = datetime.fromisoformat(state["next_run_at"])
    assert (next_run.hour, next_run.minute) == (3, 0) and next_run.replace(tzinfo=None) == expected.replace(tzinfo=None)
    assert state["last_decision"] == "skipped: 7 new examples, need 20"
    assert state["holder"] == "worker-a" and state["last_tick_at"] and rows(app, FineTuneJob) == []


def test_train_now_is_for_admins(http, headers):
    response = http.post("/v1/scheduler/train-now")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == ("This route needs an admin account: send 'Authorization: "
                                                   "Bearer <API key>'.")
    response = http.post("/v1/scheduler/train-now", headers=headers["staff"])
    assert response.status_code == 403
    assert response.json()["error"] == {"message": "This route needs the admin role; your account is staff.",
                                        "type": "permission_error", "param": None, "code": None}


def test_train_now_without_approved_data_is_a_400_that_writes_nothing(app, http, headers):
    response = http.post("/v1/scheduler/train-now", headers=headers["admin"])
    assert response.status_code == 400
    error = response.json()["error"]
    assert "has no training examples; approve some corrections first" in error["message"]
    assert error["param"] == "snapshot_id"
    assert rows(app, FineTuneJob) == [] and rows(app, DatasetSnapshot) == []
    assert http.get("/v1/scheduler", headers=headers["admin"]).json()["last_decision"] == ""

    approve(app, 2)
    response = http.post("/v1/scheduler/train-now", headers=headers["admin"])
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "validating_files" and job["model"] == "v0"
    assert [j.id for j in rows(app, FineTuneJob)] == [job["id"]]
    with Session(app.state.db) as session:
        assert session.get(DatasetSnapshot, job["snapshot_id"]).n_train == 2
    state = http.get("/v1/scheduler", headers=headers["staff"]).json()
    assert state["last_decision"] == f"started {job['id']} on request of boss"
