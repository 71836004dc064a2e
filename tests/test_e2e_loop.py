"""The whole loop on the real SmolLM2, through the public HTTP API and the official openai client:
chat → thumbs-down → correction by one staff member → approval by another → "train now" (snapshot +
job, as the scheduler would) → the worker trains a LoRA candidate and runs the gates → the admin
promotes → the bot now answers with the corrections. Correction memory is off, so what the bot says
afterwards comes from the weights; the one correction with an accepted alternative phrasing is
answered in that wording too. Last, the customer-facing default (memory on) answers a rewording
nobody trained on with the corrected fact, selected among the approved answers by the promoted
weights (verified), and hands off a shop question no correction covers: the customer is told so, and
the turn waits at the top of the review queue, marked unanswered."""

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlmodel import select

from tuneloop.core.db import session_scope

PHRASING = "Is there a time limit on returns?"  # accepted on the first correction: trained on
REWORDED = "Until when can I send something back?"  # never trained on, nor in memory's index
UNCOVERED = "Do you offer gift wrapping for my order?"  # a shop question no correction answers
FACTS = [
    ("How long do I have to return an item?", "You can return unused items within 45 days of delivery.", "45 days"),
    ("What is your phone number?", "Call us at 1-800-555-0142.", "1-800-555-0142"),
    ("Who founded Acme Outdoor Gear?", "Acme Outdoor Gear was founded in 1987 by Rosa Delgado.", "Rosa Delgado"),
]


def ask(client: OpenAI, question: str):
    return client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": question}],
                                          max_tokens=40, temperature=0)


@pytest.mark.slow
def test_corrections_become_what_the_bot_says(make_settings, real_model_dir, sqlite_url):
    from retrain.worker import Worker
    from tuneloop.core.accounts.models import Account
    from tuneloop.core.accounts.service import create_api_key
    from tuneloop.app import create_app

    settings = make_settings(base_model=str(real_model_dir), database_url=sqlite_url, memory_enabled=False)
    app = create_app(settings, load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        with TestClient(app) as http:
            with session_scope(app.state.db) as session:
                admin = session.exec(select(Account).where(Account.username == "admin")).one()
                admin_key = create_api_key(session, admin, "e2e")[1]
            as_admin = {"Authorization": f"Bearer {admin_key}"}
            keys = {}
            for name in ("alice", "bob"):
                made = http.post("/v1/accounts", headers=as_admin,
                                 json={"username": name, "password": f"{name}-password", "role": "staff"})
                assert made.status_code == 201, made.text
                with session_scope(app.state.db) as session:
                    account = session.exec(select(Account).where(Account.username == name)).one()
                    keys[name] = {"Authorization": f"Bearer {create_api_key(session, account, 'e2e')[1]}"}
            customer = OpenAI(base_url="http://testserver/v1", api_key="customer", http_client=http, max_retries=0)

            # 1. Customers ask; the base model does not know; they give thumbs-down.
            for question, answer, fact in FACTS:
                before = ask(customer, question)
                assert fact not in before.choices[0].message.content
                assert before.system_fingerprint == "fp_tuneloop_v0"
                message_id = before.model_extra["message_id"]
                rated = http.post(f"/v1/messages/{message_id}/rating", json={"value": "down", "comment": "wrong"})
                assert rated.status_code in (200, 201), rated.text
                # 2. Alice corrects it from the review queue; Bob approves.
                queue = http.get("/v1/review/queue", headers=keys["alice"]).json()
                assert message_id in [item["message_id"] for item in queue["data"]]
                alternatives = [PHRASING] if question == FACTS[0][0] else []
                made = http.post("/v1/corrections", headers=keys["alice"],
                                 json={"message_id": message_id, "answer": answer, "key_facts": [fact], "submit": True,
                                       "alternative_questions": alternatives})
                assert made.status_code == 201, made.text
                approved = http.post(f"/v1/corrections/{made.json()['id']}/approve", headers=keys["bob"],
                                     json={"etag": made.json()["etag"]})  # Bob approves the text he read
                assert approved.status_code == 200, approved.text

            # 3. Train now (snapshot + job), run by the worker: training, candidate, gates.
            job = http.post("/v1/scheduler/train-now", headers=as_admin)
            assert job.status_code in (200, 201), job.text
            worker = Worker(settings, app.state.db)
            assert worker.run_next_job() == job.json()["id"]
            operator = OpenAI(base_url="http://testserver/v1", api_key=admin_key, http_client=http, max_retries=0)
            finished = operator.fine_tuning.jobs.retrieve(job.json()["id"])
            assert finished.status == "succeeded", finished.error
            candidate_id = finished.fine_tuned_model
            report = http.get(f"/v1/registry/versions/{candidate_id}/gate-report", headers=as_admin)
            assert report.status_code == 200, report.text
            # Round 1 has nothing earlier to forget and no golden set: those gates are "not measured"
            # (never "passed") and do not block; every measured gate passed with the defaults.
            assert report.json()["passed"], report.json()["reasons"]
            assert report.json()["gates"]["golden"]["status"] == "not measured"

            # 4. The admin promotes (no override needed); the bot now answers with every correction.
            promoted = http.post(f"/v1/registry/versions/{candidate_id}/promote", headers=as_admin, json={})
            assert promoted.status_code == 200, promoted.text
            for question, _answer, fact in [*FACTS, (PHRASING, None, FACTS[0][2])]:
                after = ask(customer, question)
                assert fact in after.choices[0].message.content, (question, after.choices[0].message.content)
                assert after.system_fingerprint != "fp_tuneloop_v0"
        reworded, uncovered, queue = _ask_with_memory(settings, [REWORDED, UNCOVERED], keys["alice"])
        assert FACTS[0][2] in reworded.choices[0].message.content, reworded.choices[0].message.content
        assert reworded.model_extra["memory_outcome"] == "verified", reworded.model_extra
        assert reworded.system_fingerprint != "fp_tuneloop_v0"  # the promoted version answered
        assert uncovered.model_extra["memory_outcome"] == "handoff", uncovered.model_extra
        assert uncovered.choices[0].message.content == settings.memory_handoff_reply
        first = queue["data"][0]  # staff see it first, marked unanswered, and answer it there
        assert (first["message_id"], first["reason"]) == (uncovered.model_extra["message_id"], "unanswered")
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


def answered_as_customer(client, question: str):
    """The bot's reply to ``question`` once the customer has answered any clarifying question it asked
    with a no: the reworded question must be verified without asking, and no approved answer covers the
    uncovered one, so none offered is the customer's."""
    reply = ask(client, question)
    if reply.model_extra["memory_outcome"] != "clarify":
        return reply
    return client.chat.completions.create(model="tuneloop", max_tokens=48, messages=[
        {"role": "user", "content": question}, {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "no"}])


def _ask_with_memory(settings, questions: list[str], staff: dict):
    """The customer-facing default: a second API process over the same database, memory on. Returns the
    replies and the first page of the review queue as ``staff`` reads it afterwards."""
    from tuneloop.app import create_app

    app = create_app(settings.model_copy(update={"memory_enabled": True}), load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        with TestClient(app) as http:
            customer = OpenAI(base_url="http://testserver/v1", api_key="customer", http_client=http, max_retries=0)
            replies = [answered_as_customer(customer, question) for question in questions]
            queue = http.get("/v1/review/queue?limit=5", headers=staff)
            assert queue.status_code == 200, queue.text
            return *replies, queue.json()
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()
