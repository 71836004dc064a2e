"""Distillation runs against the scripted teacher (tests/support/distill.py): only approved pairs
train, resume without duplicates, the budget, retries, clear errors, audited auto-approval, the CLI and
the API."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from support.servers import closed_port
from support.distill import DESCRIPTION, QUESTIONS, add_approved, pairs, start, synthetic
from support.distill import engine, settings, teacher, teacher_url  # noqa: F401  (fixtures)
from feedback.distill import service as distill, plan as distill_plan
from feedback.corrections.service import approve_correction
from feedback.errors import FeedbackError, FeedbackForbiddenError
from feedback.corrections.models import CorrectionStatus
from feedback.distill.models import DistillRun, DistillStatus
from feedback.distill.teacher import TeacherError
from tuneloop.core.accounts.models import AuditEvent
from tuneloop.core.db import session_scope


# --- task runs -------------------------------------------------------------------------------------
def test_only_approved_synthetic_pairs_become_training_examples(engine, settings, teacher):
    from feedback.export import training_examples

    teacher.script(pairs(QUESTIONS[:3]))
    run = distill.execute_run(engine, settings, start(engine, distill_plan.plan_task(settings, description=DESCRIPTION,
                                                                                    count=3)))
    assert run.stored == 3
    with session_scope(engine) as session:
        assert training_examples(session, settings) == []  # nothing synthetic trains without approval
        with pytest.raises(FeedbackForbiddenError, match="another staff member|own"):
            approve_correction(session, settings, synthetic(engine)[0].id, actor="carol")
    with session_scope(engine) as session:
        approved = approve_correction(session, settings, synthetic(engine)[0].id, actor="bob")
    with Session(engine) as session:
        examples = training_examples(session, settings)
    assert [e.correction_id for e in examples] == [approved.id]
    assert examples[0].source == "synthetic" and examples[0].completion == approved.answer


def test_resume_after_interruption_stores_nothing_twice(database_url, engine, settings, teacher):
    teacher.script(pairs(QUESTIONS[:10]), pairs(QUESTIONS[:2] + QUESTIONS[10:18]), pairs(QUESTIONS[18:20]))
    run_id = start(engine, distill_plan.plan_task(settings, description=DESCRIPTION, count=20))

    def ctrl_c(_run):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.execute_run(engine, settings, run_id, on_progress=ctrl_c)
    with Session(engine) as session:
        stopped = session.get(DistillRun, run_id)
    assert stopped.status == DistillStatus.stopped and stopped.stored == 10 and "resume" in stopped.message

    run = distill.execute_run(engine, settings, run_id)  # the teacher repeats two earlier questions

    assert run.status == DistillStatus.completed and (run.stored, run.duplicates) == (20, 2)
    questions = [c.question for c in synthetic(engine)]
    assert len(questions) == len(set(questions)) == 20
    assert QUESTIONS[9] in teacher.prompts()[1]  # the resumed run told the teacher what it already has


def test_budget_stops_cleanly_and_a_larger_budget_continues(engine, settings, teacher):
    teacher.script({"content": pairs(QUESTIONS[:10]), "usage": {"prompt_tokens": 300, "completion_tokens": 1900}},
                   pairs(QUESTIONS[10:15]))
    plan = distill_plan.plan_task(settings, description=DESCRIPTION, count=15, budget=2500)
    assert plan.as_dict()["within_budget"] is True
    run = distill.execute_run(engine, settings, start(engine, plan))

    assert run.status == DistillStatus.stopped and run.stored == 10 and "budget" in run.message
    assert run.prompt_tokens + run.completion_tokens == 2200 <= 2500
    assert len(teacher.requests()) == 1
    assert teacher.requests()[0]["body"]["max_tokens"] <= 2500
    tight = distill_plan.plan_task(settings, description=DESCRIPTION, count=100, budget=1000)
    assert "stops the run before the end" in tight.summary() and not tight.as_dict()["within_budget"]

    run = distill.execute_run(engine, settings, run.id, budget=0)
    assert run.status == DistillStatus.completed and run.stored == 15


def test_rate_limits_and_server_errors_are_retried(engine, settings, teacher):
    teacher.script({"status": 429, "message": "slow down", "headers": {"retry-after-ms": "20"}},
                   {"status": 503, "message": "overloaded", "headers": {"retry-after-ms": "20"}},
                   pairs(QUESTIONS[:2]))
    run = distill.execute_run(engine, settings, start(engine, distill_plan.plan_task(settings, description=DESCRIPTION,
                                                                                    count=2)))
    assert run.status == DistillStatus.completed and run.stored == 2
    assert len(teacher.requests()) == 3


def test_teacher_failures_give_errors_that_name_the_setting(engine, settings, teacher, make_settings):
    teacher.script(*[{"status": 429, "message": "quota", "headers": {"retry-after-ms": "10"}}] * 3)
    run_id = start(engine, distill_plan.plan_task(settings, description=DESCRIPTION, count=2))
    with pytest.raises(TeacherError, match="still rate-limiting after 2 retries.*TUNELOOP_TEACHER_MAX_RETRIES"):
        distill.execute_run(engine, settings, run_id)
    with Session(engine) as session:
        failed = session.get(DistillRun, run_id)
    assert failed.status == DistillStatus.failed and "Resume" in failed.message and failed.stored == 0

    teacher.script({"status": 401, "message": "Incorrect API key provided"})
    with pytest.raises(TeacherError, match="refused the API key.*TUNELOOP_TEACHER_API_KEY"):
        distill.execute_run(engine, settings, run_id)

    closed = closed_port()
    unreachable = settings.model_copy(update={"teacher_base_url": f"http://127.0.0.1:{closed}/v1",
                                              "teacher_max_retries": 0})
    with pytest.raises(TeacherError, match=f"cannot reach the teacher at http://127.0.0.1:{closed}/v1.*"
                                           "TUNELOOP_TEACHER_BASE_URL"):
        distill.execute_run(engine, unreachable, run_id)
    with pytest.raises(TeacherError, match="TUNELOOP_TEACHER_MODEL is empty"):
        distill_plan.plan_task(settings.model_copy(update={"teacher_model": ""}), description=DESCRIPTION, count=1)
    own = distill_plan.plan_task(make_settings(port=8123), description=DESCRIPTION, count=1)
    assert own.teacher.own_server and own.teacher.base_url == "http://127.0.0.1:8123/v1"
    assert own.estimated_cost is None and "cost unknown" in own.summary()
    with pytest.raises(FeedbackError, match="description must not be empty"):
        distill_plan.plan_task(settings, description=" ", count=3)


# --- paraphrases -----------------------------------------------------------------------------------
def test_auto_approved_paraphrases_are_audited(engine, settings, teacher):
    parent = add_approved(engine, settings, QUESTIONS[0], "Within 60 days.")
    auto = settings.model_copy(update={"distill_paraphrases_per_correction": 1,
                                       "distill_auto_approve_paraphrases": True})
    teacher.script(json.dumps(["Until when can I send back hiking boots?"]))
    with Session(engine) as session:
        plan = distill_plan.plan_paraphrases(session, auto)
    distill.execute_run(engine, auto, start(engine, plan))
    [paraphrase] = synthetic(engine)
    assert paraphrase.status == CorrectionStatus.approved and paraphrase.reviewer.startswith("auto:")
    with Session(engine) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.object_id == paraphrase.id)
                              .order_by(AuditEvent.id)).all()
    assert [e.action for e in events] == ["correction.created", "correction.auto_approved"]
    assert events[1].detail["parent"] == parent.id


# --- CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def tuneloop(cli_runner, tmp_path, teacher_url):
    """The real CLI in-process with a scripted teacher; returns (exit code, stdout, stderr)."""
    return cli_runner({"DATA_DIR": tmp_path / "cli-data", "ADMIN_PASSWORD": "admin-password",
                       "TEACHER_BASE_URL": f"{teacher_url}/v1", "TEACHER_MODEL": "big-teacher",
                       "TEACHER_MAX_RETRIES": "0"}, unset=("DATABASE_URL",))


def test_cli_estimates_asks_and_runs(tuneloop, teacher):
    code, out, _ = tuneloop("distill", "task", DESCRIPTION, "--count", "3", stdin="n\n")
    assert code == 1 and "Estimate: ~" in out and "cost unknown" in out and "Ask the teacher now?" in out
    assert teacher.requests() == []

    teacher.script(pairs(QUESTIONS[:3]))
    code, out, err = tuneloop("distill", "task", DESCRIPTION, "--count", "3", "--temperature", "0.5", "--yes")
    assert code == 0, err
    assert "3 of 3 pairs stored" in out and "wait for approval" in out
    assert teacher.requests()[0]["body"]["temperature"] == 0.5
    code, out, _ = tuneloop("distill", "runs")
    assert "task" in out and "completed" in out and "3/3" in out

    code, out, err = tuneloop("distill", "task", DESCRIPTION, "--count", "2", "--yes")  # script exhausted: 500
    assert code == 2 and "error: the teacher at" in err and "failed with 500" in err and "Traceback" not in err
    run_id = err.split("distill resume ")[1].split("`")[0]
    teacher.script(pairs(QUESTIONS[3:5]))
    code, out, err = tuneloop("distill", "resume", run_id)
    assert code == 0 and "2 of 2 pairs stored" in out
    code, _, err = tuneloop("distill", "paraphrase", "--yes")
    assert code == 2 and "error: paraphrase augmentation is off" in err


# --- API -------------------------------------------------------------------------------------------
@pytest.fixture
def api(settings):
    from fastapi.testclient import TestClient

    from tuneloop.core.accounts import service as accounts
    from tuneloop.core.accounts.models import Role
    from tuneloop.app import create_app

    app = create_app(settings, load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        staff = accounts.create_account(session, username="alice", password="password1", role=Role.staff)
        keys = {"alice": accounts.create_api_key(session, staff)[1],
                "admin": accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]}
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        yield client
    app.state.db.dispose()


def test_api_estimates_and_runs_for_admins_only(database_url, api, teacher):
    admin, body = api.as_["admin"], {"description": DESCRIPTION, "count": 3}
    for method, path in (("POST", "/v1/distill/estimate"), ("POST", "/v1/distill/runs"), ("GET", "/v1/distill/runs"),
                         ("GET", "/v1/distill/runs/distill_x"), ("POST", "/v1/distill/runs/distill_x/resume")):
        assert api.request(method, path, json=body).status_code == 401
        forbidden = api.request(method, path, json=body, headers=api.as_["alice"])
        assert forbidden.status_code == 403 and "admin role" in forbidden.json()["error"]["message"]

    estimate = api.post("/v1/distill/estimate", json=body, headers=admin).json()
    assert estimate["requested"] == 3 and estimate["estimated_tokens"] > 0 and estimate["estimated_cost"] is not None
    assert teacher.requests() == []

    teacher.script(pairs(QUESTIONS[:3]))
    started = api.post("/v1/distill/runs", json=body, headers=admin)
    assert started.status_code == 202 and started.json()["estimate"]["requested"] == 3
    run = api.get(f"/v1/distill/runs/{started.json()['id']}", headers=admin).json()  # ran in the background
    assert (run["status"], run["stored"], run["created_by"]) == ("completed", 3, "admin")
    assert run["tokens_used"] > 0 and run["params"]["teacher"]["model"] == "big-teacher"
    assert [r["id"] for r in api.get("/v1/distill/runs", headers=admin).json()["data"]] == [run["id"]]
    pending = api.get("/v1/corrections", params={"status": "submitted"}, headers=admin).json()["data"]
    assert len(pending) == 3 and all(c["source"] == "synthetic" for c in pending)

    bad = [({"description": " ", "count": 3}, 400, "description must not be empty"),
           ({"description": DESCRIPTION, "count": 0}, 400, "count"),
           ({"description": DESCRIPTION, "temperature": 3}, 400, "temperature"),
           ({"kind": "paraphrase"}, 400, "TUNELOOP_DISTILL_PARAPHRASES_PER_CORRECTION"),
           ({"kind": "docs"}, 400, "kind")]
    for payload, status, message in bad:
        response = api.post("/v1/distill/runs", json=payload, headers=admin)
        assert response.status_code == status and message in response.json()["error"]["message"], payload
    missing = api.get("/v1/distill/runs/distill_nope", headers=admin)
    assert missing.status_code == 404 and "tuneloop distill runs" in missing.json()["error"]["message"]
    done = api.post(f"/v1/distill/runs/{run['id']}/resume", headers=admin)
    assert done.status_code == 409 and "already completed" in done.json()["error"]["message"]

    failing = api.post("/v1/distill/runs", json=body, headers=admin).json()  # script exhausted: 500s
    failed = api.get(f"/v1/distill/runs/{failing['id']}", headers=admin).json()
    assert failed["status"] == "failed" and "failed with 500" in failed["message"]
    teacher.script(pairs(QUESTIONS[3:6]))
    assert api.post(f"/v1/distill/runs/{failing['id']}/resume", json={"budget": 0}, headers=admin).status_code == 202
    resumed = api.get(f"/v1/distill/runs/{failing['id']}", headers=admin).json()
    assert resumed["status"] == "completed" and resumed["stored"] == 3 and resumed["params"]["budget"] == 0
