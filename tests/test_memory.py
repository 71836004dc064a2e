"""Correction memory: an approved correction is given to the model as context for a near question
within seconds of its approval, without training; the answer records which corrections it used."""

import time

import pytest
from sqlmodel import Session

from bot.models import Message
from feedback.corrections.service import approve_correction, create_correction, submit_correction
from tuneloop.core.accounts.models import Role
from tuneloop.core.accounts.service import create_account
from tuneloop.core.db import session_scope


def approve_knowledge(app, question: str, answer: str) -> str:
    settings, db = app.state.settings, app.state.db
    with session_scope(db) as session:
        for name in ("writer", "checker"):
            create_account(session, username=name, password="password-123", role=Role.staff)
    with session_scope(db) as session:
        correction = create_correction(session, settings, actor="writer", question=question, answer=answer)
        submit_correction(session, correction.id, actor="writer")
        approve_correction(session, settings, correction.id, actor="checker")
        return correction.id


def ask(openai_client, question: str):
    return openai_client.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": question}], max_tokens=4)


def test_fresh_approval_reaches_the_next_answer_within_seconds(tiny_app, openai_client):
    before = ask(openai_client, "How long do I have to return an item I bought?")
    assert before.model_extra["memory_correction_ids"] == []
    correction_id = approve_knowledge(tiny_app, "How long do I have to return an item?",
                                      "You can return unused items within 45 days of delivery.")
    memory = tiny_app.state.runtime.memory
    deadline = time.monotonic() + 15  # the index refreshes every 2 s: the approval must be in it within seconds
    while not memory.lookup("How long do I have to return an item I bought?") and time.monotonic() < deadline:
        time.sleep(0.2)
    after = ask(openai_client, "How long do I have to return an item I bought?")
    assert after.model_extra["memory_correction_ids"] == [correction_id]
    with Session(tiny_app.state.db) as session:
        stored = session.get(Message, after.model_extra["message_id"])
        assert stored.memory_correction_ids == [correction_id]
    # An unrelated question gets no memory.
    assert ask(openai_client, "Tell me a joke about penguins").model_extra["memory_correction_ids"] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_memory_off_gives_no_context(make_settings, tiny_model_dir, database_url):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url, memory_enabled=False),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        approve_knowledge(app, "How long do I have to return an item?", "Within 45 days of delivery.")
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
            assert ask(client, "How long do I have to return an item?").model_extra["memory_correction_ids"] == []
    finally:
        app.state.runtime.stop()
