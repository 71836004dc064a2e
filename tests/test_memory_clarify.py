"""Clarifying questions (issue 24): where one approved answer is likely but not certain, the bot asks
"Do you mean ...?" with its approved question instead of guessing; the customer's yes gets the approved
answer verified, a no a handoff that tops the review queue, and a correction written from it is about
the customer's question, not about "no"; calibration takes a confirmed wording as a positive."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlmodel import Session

from bot.models import Message
from feedback.corrections.service import approved_corrections, create_correction
from feedback.memory.calibration import LabelledQuestion, _negatives, confirmed_wordings
from bot.clarify import NO, YES, clarify_reply, confirmation, offered_question
from feedback.memory.service import CLARIFY, HANDOFF, VERIFIED
from tuneloop.core.accounts.service import create_api_key, get_account
from tuneloop.core.db import session_scope
from tuneloop.core.settings import Settings
from test_memory_outcomes import approve
from test_memory_selection import FACTS

REWORDED = "What does it cost to get my order the next day?"


def test_the_offered_question_is_read_back_from_the_reply_whatever_the_template():
    settings = Settings(admin_password="x" * 12)
    reply = clarify_reply(settings, "How much is next-day delivery?")
    assert "How much is next-day delivery?" in reply
    assert offered_question(settings, reply) == "How much is next-day delivery?"
    assert offered_question(settings, "How much is next-day delivery?") is None  # not a clarifying reply
    custom = Settings(admin_password="x" * 12, memory_clarify_reply="Did you mean «{question}»?")
    assert offered_question(custom, clarify_reply(custom, "Do you rent kayaks?")) == "Do you rent kayaks?"
    assert offered_question(custom, reply) is None
    cut = reply[:reply.index("?") + 3]  # a client max_tokens cut the reply after the question
    assert offered_question(settings, cut) == "How much is next-day delivery?"


@pytest.mark.parametrize("turn, said", [("yes", YES), ("Yes please!", YES), ("yep", YES), ("that's right", YES),
                                        ("correct", YES), ("no", NO), ("Nope.", NO), ("no, not that", NO),
                                        ("not really", NO), ("How much is shipping to Canada?", None),
                                        ("what about kayaks", None), ("", None)])
def test_a_yes_or_a_no_answers_the_clarifying_question_anything_else_is_a_new_question(turn, said):
    assert confirmation(turn) == said


def test_a_clarifying_reply_without_the_question_slot_is_refused_naming_the_setting():
    with pytest.raises(ValidationError, match="memory_clarify_reply must contain {question} exactly once"):
        Settings(admin_password="x" * 12, memory_clarify_reply="Did you mean that?")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_likely_answer_is_offered_then_verified_on_yes_and_handed_off_on_no(make_settings, tiny_model_dir,
                                                                           database_url):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    # never certain (verified needs probability 1.0), always likely enough to ask (clarify from 0.0)
    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url,
                                   memory_verified_probability=1.0, memory_clarify_probability=0.0),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        ids = approve(app, *FACTS)
        questions = {cid: question for cid, (question, _) in zip(ids, FACTS)}
        answers = {cid: answer for cid, (_, answer) in zip(ids, FACTS)}
        with session_scope(app.state.db) as session:
            staff_key = create_api_key(session, get_account(session, "checker"))[1]
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
            asked = client.chat.completions.create(model="tuneloop", max_tokens=32,
                                                   messages=[{"role": "user", "content": REWORDED}])
            assert asked.model_extra["memory_outcome"] == CLARIFY
            [offered] = asked.model_extra["memory_correction_ids"]
            offer = asked.choices[0].message.content
            assert offer == clarify_reply(app.state.settings, questions[offered])
            assert asked.usage.completion_tokens > 0  # the canned text is counted like any reply

            def answer_offer(said: str):
                return client.chat.completions.create(model="tuneloop", max_tokens=32, messages=[
                    {"role": "user", "content": REWORDED}, {"role": "assistant", "content": offer},
                    {"role": "user", "content": said}])

            yes = answer_offer("Yes, that one")
            assert yes.model_extra["memory_outcome"] == VERIFIED
            assert yes.model_extra["memory_correction_ids"] == [offered]
            assert yes.choices[0].message.content == answers[offered]

            no = answer_offer("no")
            assert no.model_extra["memory_outcome"] == HANDOFF
            assert no.choices[0].message.content == app.state.settings.memory_handoff_reply
            queue = http.get("/v1/review/queue", headers={"Authorization": f"Bearer {staff_key}"}).json()
        assert (queue["data"][0]["message_id"], queue["data"][0]["reason"]) == (no.model_extra["message_id"],
                                                                                "unanswered")
        with Session(app.state.db) as session:
            assert session.get(Message, asked.model_extra["message_id"]).memory_outcome == CLARIFY
        with Session(app.state.db) as session:  # calibration learns from the yes, and never from "yes" or "no"
            confirmed = confirmed_wordings(session, app.state.settings, approved_corrections(session))
            negatives = _negatives(session, app.state.settings, app.state.runtime.memory, [])
        assert confirmed == [LabelledQuestion(REWORDED, offered)]
        assert not {"yes, that one", "no"} & {n.lower() for n in negatives}
        with session_scope(app.state.db) as session:  # staff answer the handed-off turn: its question is REWORDED
            correction = create_correction(session, app.state.settings, actor="writer",
                                           message_id=no.model_extra["message_id"], answer="Overnight is $14.99.")
            assert correction.question == REWORDED
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_clarifying_switched_off_hands_the_likely_answer_off(make_settings, tiny_model_dir, database_url):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url,
                                   memory_verified_probability=1.0, memory_clarify_probability=0.0,
                                   memory_clarify_enabled=False), load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        approve(app, *FACTS)
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
            reply = client.chat.completions.create(model="tuneloop", max_tokens=32,
                                                   messages=[{"role": "user", "content": REWORDED}])
        assert reply.model_extra["memory_outcome"] == HANDOFF
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()
