"""Alternative phrasings on corrections ("other ways customers ask this"): validated with a 4xx that
names the fix, shown to the approver, exported per training example, and suggested from logged
customer questions (never from turns sent with ``store: false``), the served model and the teacher,
each kept only when memory routes it to its own correction. Plus ``tuneloop memory calibrate``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from support.distill import teacher, teacher_url  # noqa: F401  (fixtures)
from feedback.corrections.service import create_correction
from feedback.export import training_examples
from feedback.corrections.models import CorrectionStatus
from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope

RETURNS = ("How long do I have to return an item?", "You can return unused items within 45 days of delivery.")
TUNEUP = ("How much is a bike tune-up?", "A standard bike tune-up costs $65 and takes two days.")


@pytest.fixture
def app(make_settings, tiny_model_dir, database_url, teacher_url):  # noqa: F811
    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url,
                                   teacher_base_url=f"{teacher_url}/v1", teacher_model="big-teacher",
                                   teacher_max_retries=0), load_model=False, mount_ui=False)
    yield app
    app.state.runtime.stop()
    app.state.db.dispose()


@pytest.fixture
def api(app):
    with session_scope(app.state.db) as session:
        keys = {name: accounts.create_api_key(session, accounts.create_account(
            session, username=name, password="password1", role=Role.staff))[1] for name in ("alice", "bob")}
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        yield client


def approved(app, question: str, answer: str, alternatives=()) -> str:
    with session_scope(app.state.db) as session:
        return create_correction(session, app.state.settings, actor="bob", question=question, answer=answer,
                                 alternative_questions=alternatives, status=CorrectionStatus.approved).id


def test_bad_alternative_questions_are_refused_with_the_fix(api, app):
    tuneup_id = approved(app, *TUNEUP)
    alice = api.as_["alice"]
    cases = [
        (["What is your return window?", "  "], "alternative_questions[1] is empty"),
        (["What is your return window?", "what is your return window"], "repeats alternative_questions[0]"),
        (["how long do I have to return an item"], "repeats the question itself"),
        (["How much is a bike tune-up?"], f"approved correction {tuneup_id}"),
    ]
    for alternatives, fix in cases:
        response = api.post("/v1/corrections", headers=alice, json={
            "question": RETURNS[0], "answer": RETURNS[1], "alternative_questions": alternatives})
        assert response.status_code == 400 and fix in response.json()["error"]["message"], response.text

    created = api.post("/v1/corrections", headers=alice, json={
        "question": RETURNS[0], "answer": RETURNS[1], "submit": True,
        "alternative_questions": [" What is your return window? ", "Until when can I send something back?"]})
    assert created.status_code == 201, created.text
    correction_id = created.json()["id"]
    assert created.json()["alternative_questions"] == ["What is your return window?",
                                                       "Until when can I send something back?"]
    bad = api.patch(f"/v1/corrections/{correction_id}", headers=alice,
                    json={"alternative_questions": ["How much is a bike tune-up?"]})
    assert bad.status_code == 400 and tuneup_id in bad.json()["error"]["message"]
    edited = api.patch(f"/v1/corrections/{correction_id}", headers=alice,
                       json={"alternative_questions": ["How many days do I get to return a purchase?"]})
    assert edited.status_code == 200 and edited.json()["alternative_questions"] == [
        "How many days do I get to return a purchase?"]

    shown = api.get(f"/v1/corrections/{correction_id}", headers=api.as_["bob"]).json()  # what the approver sees
    assert shown["alternative_questions"] == ["How many days do I get to return a purchase?"]
    assert api.post(f"/v1/corrections/{correction_id}/approve", headers=api.as_["bob"],
                    json={"etag": shown["etag"]}).status_code == 200  # approves exactly what he was shown
    with Session(app.state.db) as session:
        examples = {e.correction_id: e for e in training_examples(session, app.state.settings)}
    assert examples[correction_id].alternative_questions == ["How many days do I get to return a purchase?"]
    assert examples[tuneup_id].alternative_questions == []


def test_suggestions_come_from_logs_model_and_teacher_and_route_to_their_correction(api, app, teacher):  # noqa: F811
    from openai import OpenAI

    returns_id = approved(app, *RETURNS)
    approved(app, *TUNEUP)
    app.state.runtime.start(background=False)
    chat = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=api, max_retries=0)
    logged, private = "How many days do I have to return an item?", "How many days do I have to send an item back?"
    chat.chat.completions.create(model="tuneloop", max_tokens=2, messages=[{"role": "user", "content": logged}])
    chat.chat.completions.create(model="tuneloop", max_tokens=2, store=False,
                                 messages=[{"role": "user", "content": private}])
    chat.chat.completions.create(model="tuneloop", max_tokens=2,
                                 messages=[{"role": "user", "content": "What does a bike tune-up cost?"}])
    teacher.script("1. What is the return period for purchases?\n2. What does a bike tune-up cost?\n"
                   "- Until when can I send back something I bought?\nNot a question")

    response = api.get(f"/v1/corrections/{returns_id}/phrasing-suggestions", headers=api.as_["alice"])
    assert response.status_code == 200, response.text
    body = response.json()
    by_source: dict[str, list[str]] = {}
    for item in body["data"]:
        by_source.setdefault(item["source"], []).append(item["text"])
    assert by_source["logs"] == [logged]  # the tune-up question routes elsewhere; store=false was never logged
    assert private not in sum(by_source.values(), [])
    assert set(by_source["teacher"]) == {"What is the return period for purchases?",
                                         "Until when can I send back something I bought?"}
    assert RETURNS[0] in teacher.prompts()[0]
    assert "model" not in body["skipped"]  # the served model was asked (its random rewrites may all be dropped)
    scores = [item["score"] for item in body["data"]]
    assert scores == sorted(scores, reverse=True)

    bad = api.get(f"/v1/corrections/{returns_id}/phrasing-suggestions?sources=logs,oracle", headers=api.as_["alice"])
    assert bad.status_code == 400 and "use logs, model, teacher" in bad.json()["error"]["message"]
    missing = api.get("/v1/corrections/corr_nope/phrasing-suggestions", headers=api.as_["alice"])
    assert missing.status_code == 404


@pytest.fixture
def tuneloop(cli_runner, tmp_path):
    return cli_runner({"DATA_DIR": tmp_path / "cli-data", "ADMIN_PASSWORD": "admin-password"},
                      unset=("DATABASE_URL",))


def test_calibrate_prints_the_curve_and_suggests_a_threshold(tuneloop, tmp_path):
    from tuneloop.app import prepare_database
    from tuneloop.core.settings import get_settings

    code, out, _ = tuneloop("memory", "calibrate")
    assert code == 0 and "no approved corrections yet" in out
    settings = get_settings()
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        for question, answer, alternatives in (
                (*RETURNS, ["What is your return window?", "How many days do I get to return a purchase?"]),
                (*TUNEUP, ["What does a bike tune-up cost?"]),
                ("Do you rent kayaks?", "Yes, kayaks rent for $40 a day.", ["Can I hire a kayak from you?"])):
            create_correction(session, settings, actor="a", question=question, answer=answer,
                              alternative_questions=alternatives, status=CorrectionStatus.approved)
    engine.dispose()
    negatives = tmp_path / "offtopic.txt"
    negatives.write_text("# off-topic\nTell me a joke about penguins\nWhat is the capital of France?\n")
    code, out, err = tuneloop("memory", "calibrate", "--negatives", str(negatives))
    assert code == 0, err
    assert "positives (held-out alternative questions): 4   negatives (uncovered): 2" in out
    header = next(line for line in out.splitlines() if line.strip().startswith("probability"))
    assert header.split() == ["probability", "verified", "correct", "wrong", "precision", "recall", "uncovered",
                              "verified"]
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and line.strip()[1:2] == "."]
    assert [float(r[0]) for r in rows][:2] == [0.1, 0.15] and len(rows) == 18
    recalls = [float(r[5].rstrip("%")) for r in rows]
    assert recalls == sorted(recalls, reverse=True)  # a higher probability verifies fewer
    assert f"configured memory_verified_probability {settings.memory_verified_probability:.3f}" in out
    assert "fitting needs at least 5 alternative questions and 5 uncovered questions" in out  # defaults measured
    assert "suggested: TUNELOOP_MEMORY_VERIFIED_PROBABILITY=" in out or "no threshold reaches" in out
    code, out, _ = tuneloop("memory", "calibrate", "--save")
    assert code == 0 and "saved:" not in out  # nothing fitted, nothing stored

    code, out, _ = tuneloop("memory", "calibrate", "--json")
    assert code == 0 and '"positives": 4' in out
    code, _, err = tuneloop("memory", "calibrate", "--target-precision", "1.5")
    assert code == 2 and "--target-precision must be in (0, 1]" in err
    code, _, err = tuneloop("memory", "calibrate", "--negatives", str(tmp_path / "none.txt"))
    assert code == 2 and "no such file" in err


def test_model_rewrites_are_parsed_into_questions():
    from feedback.phrasings import _copies_example, parse_rewrites

    text = ("1. 1. When is shipping free?\n2) Is delivery free over some amount?\n- Shipping is free.\n\n(4) Why?\n"
            "Question: Do you ship for free?")
    assert parse_rewrites(text) == ["When is shipping free?", "Is delivery free over some amount?",
                                    "Do you ship for free?"]
    assert _copies_example("When is shipping to Canada free?", "When is shipping free?")  # the worked example leaked
    assert not _copies_example("Do you ship to Canada?", "Do you ship to Canada?")
