"""Clarifying questions (issue 24): where one approved answer is likely but not certain, the bot asks
"Do you mean ...?" with its approved question instead of guessing, and where a few are plausible it
lists them; the customer's yes (or number) gets the approved answer verified, a no the next questions
found (once), then a handoff that tops
the review queue, and a correction written from it is about the customer's question, not about "no";
calibration takes a confirmed wording as a positive."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from pydantic import ValidationError
from sqlmodel import Session

from bot.models import Message
from feedback.corrections.service import approved_corrections, create_correction
from feedback.memory.calibration import LabelledQuestion, _negatives, confirmed_wordings
from bot.clarify import NONE_OF_THEM, clarify_reply, offered_questions, picked
from feedback.memory.service import CLARIFY, HANDOFF, VERIFIED
from tuneloop.core.accounts.service import create_api_key, get_account
from tuneloop.core.db import session_scope
from tuneloop.core.settings import Settings
from test_memory_outcomes import approve
from test_memory_selection import FACTS

REWORDED = "What does it cost to get my order the next day?"


def test_the_offered_question_is_read_back_from_the_reply_whatever_the_template():
    settings = Settings(admin_password="x" * 12)
    reply = clarify_reply(settings, ["How much is next-day delivery?"])
    assert "How much is next-day delivery?" in reply
    assert offered_questions(settings, reply) == ["How much is next-day delivery?"]
    assert offered_questions(settings, "How much is next-day delivery?") == []  # not a clarifying reply
    custom = Settings(admin_password="x" * 12, memory_clarify_reply="Did you mean «{question}»?")
    assert offered_questions(custom, clarify_reply(custom, ["Do you rent kayaks?"])) == ["Do you rent kayaks?"]
    assert offered_questions(custom, reply) == []
    cut = reply[:reply.index("?") + 3]  # a client max_tokens cut the reply after the question
    assert offered_questions(settings, cut) == ["How much is next-day delivery?"]


def test_several_plausible_questions_are_listed_numbered_and_read_back_even_when_cut():
    settings = Settings(admin_password="x" * 12)
    questions = ["How much is next-day delivery?", "How much is standard shipping?", "Do you ship abroad?"]
    reply = clarify_reply(settings, questions)
    assert "\n1. How much is next-day delivery?\n2. How much is standard shipping?\n3. Do you ship abroad?\n" in reply
    assert offered_questions(settings, reply) == questions
    assert offered_questions(settings, reply[:reply.index("3.")]) == questions[:2]  # max_tokens cut the list
    custom = Settings(admin_password="x" * 12, memory_clarify_choices_reply="Which one?\n{choices}")
    assert offered_questions(custom, clarify_reply(custom, questions[:2])) == questions[:2]
    assert offered_questions(custom, reply) == []


@pytest.mark.parametrize("turn, offered, choice", [
    ("yes", 1, 0), ("Yes please!", 1, 0), ("yep", 1, 0), ("that's right", 1, 0), ("correct", 1, 0),
    ("no", 1, NONE_OF_THEM), ("Nope.", 1, NONE_OF_THEM), ("no, not that", 1, NONE_OF_THEM),
    ("not really", 1, NONE_OF_THEM), ("How much is shipping to Canada?", 1, None), ("what about kayaks", 1, None),
    ("", 1, None), ("2", 3, 1), ("the second one", 3, 1), ("Number 3 please", 3, 2), ("1.", 3, 0), ("one", 3, 0),
    ("none of them", 3, NONE_OF_THEM), ("neither", 2, NONE_OF_THEM), ("4", 3, None), ("2", 1, None),
    ("yes", 3, None), ("1 or 2", 3, None)])
def test_a_yes_a_number_or_a_no_answers_the_clarifying_question_anything_else_is_a_new_question(turn, offered, choice):
    assert picked(turn, offered) == choice


def test_a_choices_reply_without_its_slot_or_its_own_text_is_refused_naming_the_setting():
    for bad in ("Which one?", "{choices}\nWhich one?"):
        with pytest.raises(ValidationError, match="memory_clarify_choices_reply must contain {choices} exactly once"):
            Settings(admin_password="x" * 12, memory_clarify_choices_reply=bad)


@pytest.mark.parametrize("score", [-0.1, 1.5])
def test_an_after_no_score_outside_0_to_1_is_refused_naming_the_setting(score):
    with pytest.raises(ValidationError, match="memory_clarify_after_no_score"):
        Settings(admin_password="x" * 12, memory_clarify_after_no_score=score)


def test_a_clarifying_reply_without_the_question_slot_is_refused_naming_the_setting():
    with pytest.raises(ValidationError, match="memory_clarify_reply must contain {question} exactly once"):
        Settings(admin_password="x" * 12, memory_clarify_reply="Did you mean that?")


@contextmanager
def chatting(make_settings, tiny_model_dir, database_url, **overrides):
    """An API app with FACTS approved: (app, http client, openai client, questions and answers by correction id)."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url, **overrides),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        ids = approve(app, *FACTS)
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
            yield app, http, client, dict(zip(ids, (q for q, _ in FACTS))), dict(zip(ids, (a for _, a in FACTS)))
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


def answer_offer(client, offer: str, said: str):
    """The customer answers the clarifying reply ``offer`` to REWORDED with ``said``."""
    return client.chat.completions.create(model="tuneloop", max_tokens=32, messages=[
        {"role": "user", "content": REWORDED}, {"role": "assistant", "content": offer},
        {"role": "user", "content": said}])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_likely_answer_is_offered_then_verified_on_yes_and_handed_off_on_no(make_settings, tiny_model_dir,
                                                                           database_url):
    # never certain (verified needs probability 1.0), always likely enough to ask (clarify from 0.0)
    # memory_clarify_choices=1: nothing is listed after the no (test_a_no_lists_the_next_questions_found)
    with chatting(make_settings, tiny_model_dir, database_url, memory_verified_probability=1.0,
                  memory_clarify_probability=0.0, memory_clarify_choices=1) as (app, http, client, questions, answers):
        with session_scope(app.state.db) as session:
            staff_key = create_api_key(session, get_account(session, "checker"))[1]
        asked = client.chat.completions.create(model="tuneloop", max_tokens=32,
                                               messages=[{"role": "user", "content": REWORDED}])
        assert asked.model_extra["memory_outcome"] == CLARIFY
        [offered] = asked.model_extra["memory_correction_ids"]
        offer = asked.choices[0].message.content
        assert offer == clarify_reply(app.state.settings, [questions[offered]])
        assert asked.usage.completion_tokens > 0  # the canned text is counted like any reply

        yes = answer_offer(client, offer, "Yes, that one")
        assert yes.model_extra["memory_outcome"] == VERIFIED
        assert yes.model_extra["memory_correction_ids"] == [offered]
        assert yes.choices[0].message.content == answers[offered]

        no = answer_offer(client, offer, "no")
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


def continue_offers(client, offer: str, *said: str):
    """The customer answers the clarifying reply ``offer`` to REWORDED with ``said[0]``, the bot's next
    clarifying reply with ``said[1]``, and so on: the last reply."""
    messages = [{"role": "user", "content": REWORDED}, {"role": "assistant", "content": offer}]
    for n, turn in enumerate(said):
        reply = client.chat.completions.create(model="tuneloop", max_tokens=96,
                                               messages=messages + [{"role": "user", "content": turn}])
        if n + 1 < len(said):
            assert reply.model_extra["memory_outcome"] == CLARIFY
            messages += [{"role": "user", "content": turn},
                         {"role": "assistant", "content": reply.choices[0].message.content}]
    return reply


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_no_lists_the_next_questions_found_and_a_pick_from_them_is_verified(make_settings, tiny_model_dir,
                                                                              database_url):
    # every other approved question scores above the list's floor: the no lists the next 3 retrieval finds
    with chatting(make_settings, tiny_model_dir, database_url, memory_verified_probability=1.0,
                  memory_clarify_probability=0.0, memory_clarify_after_no_score=0.0) as (app, http, client,
                                                                                      questions, answers):
        settings = app.state.settings
        asked = client.chat.completions.create(model="tuneloop", max_tokens=32,
                                               messages=[{"role": "user", "content": REWORDED}])
        [declined] = asked.model_extra["memory_correction_ids"]
        offer = asked.choices[0].message.content

        listed = continue_offers(client, offer, "no")
        assert listed.model_extra["memory_outcome"] == CLARIFY
        others = listed.model_extra["memory_correction_ids"]
        assert len(others) == settings.memory_clarify_choices and declined not in others
        ranked = [s.correction_id for s in app.state.runtime.memory.search(REWORDED) if s.correction_id != declined]
        assert others == ranked[:settings.memory_clarify_choices]  # retrieval's order, the declined one left out
        assert listed.choices[0].message.content == clarify_reply(settings, [questions[c] for c in others])

        second = continue_offers(client, offer, "no", "2")
        assert second.model_extra["memory_outcome"] == VERIFIED
        assert second.choices[0].message.content == answers[others[1]]
        handed_off = continue_offers(client, offer, "no", "none of them")
        assert handed_off.model_extra["memory_outcome"] == HANDOFF
        with Session(app.state.db) as session:  # the pick labels the customer's question, never the "no"
            confirmed = confirmed_wordings(session, settings, approved_corrections(session))
        assert confirmed == [LabelledQuestion(REWORDED, others[1])]
        with session_scope(app.state.db) as session:  # staff answer the handed-off turn: its question is REWORDED
            correction = create_correction(session, settings, actor="writer",
                                           message_id=handed_off.model_extra["message_id"], answer="It is $14.99.")
            assert correction.question == REWORDED


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_no_to_a_list_lists_the_next_questions_once_then_hands_off(make_settings, tiny_model_dir, database_url):
    with chatting(make_settings, tiny_model_dir, database_url, memory_verified_probability=1.0,
                  memory_clarify_probability=1.0, memory_clarify_choice_probability=0.0, memory_clarify_choices=2,
                  memory_clarify_after_no_score=0.0) as (app, http, client, questions, answers):
        asked = client.chat.completions.create(model="tuneloop", max_tokens=64,
                                               messages=[{"role": "user", "content": REWORDED}])
        first = asked.model_extra["memory_correction_ids"]
        assert len(first) == 2
        listed = continue_offers(client, asked.choices[0].message.content, "none of them")
        assert listed.model_extra["memory_outcome"] == CLARIFY
        ranked = [s.correction_id for s in app.state.runtime.memory.search(REWORDED) if s.correction_id not in first]
        assert listed.model_extra["memory_correction_ids"] == ranked[:2]  # the next two, never one offered before
        assert continue_offers(client, asked.choices[0].message.content, "none of them", "2").choices[0] \
            .message.content == answers[ranked[1]]
        handed_off = continue_offers(client, asked.choices[0].message.content, "none of them", "no")
        assert handed_off.model_extra["memory_outcome"] == HANDOFF  # one more list per question, never a third


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_no_is_handed_off_when_nothing_else_is_found(make_settings, tiny_model_dir, database_url):
    with chatting(make_settings, tiny_model_dir, database_url, memory_verified_probability=1.0,
                  memory_clarify_probability=0.0, memory_clarify_after_no_score=1.0) as (app, http, client,
                                                                                      questions, answers):
        asked = client.chat.completions.create(model="tuneloop", max_tokens=32,
                                               messages=[{"role": "user", "content": REWORDED}])
        assert continue_offers(client, asked.choices[0].message.content, "no").model_extra["memory_outcome"] == HANDOFF


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_clarifying_switched_off_hands_the_likely_answer_off(make_settings, tiny_model_dir, database_url):
    with chatting(make_settings, tiny_model_dir, database_url, memory_verified_probability=1.0,
                  memory_clarify_probability=0.0, memory_clarify_choice_probability=0.0,
                  memory_clarify_enabled=False) as (app, http, client, questions, answers):
        reply = client.chat.completions.create(model="tuneloop", max_tokens=32,
                                               messages=[{"role": "user", "content": REWORDED}])
    assert reply.model_extra["memory_outcome"] == HANDOFF


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_plausible_answers_are_listed_and_the_customers_number_gets_that_answer_verified(make_settings, tiny_model_dir,
                                                                                        database_url):
    # no single answer likely enough to ask about (clarify needs 1.0), every candidate plausible enough to list
    with chatting(make_settings, tiny_model_dir, database_url, memory_verified_probability=1.0,
                  memory_clarify_probability=1.0, memory_clarify_choice_probability=0.0,
                  memory_clarify_choices=2, memory_clarify_after_no_score=1.0) as (app, http, client, questions,
                                                                                    answers):
        asked = client.chat.completions.create(model="tuneloop", max_tokens=64,
                                               messages=[{"role": "user", "content": REWORDED}])
        assert asked.model_extra["memory_outcome"] == CLARIFY
        offered = asked.model_extra["memory_correction_ids"]
        assert len(offered) == 2  # memory_clarify_choices
        offer = asked.choices[0].message.content
        assert offer == clarify_reply(app.state.settings, [questions[cid] for cid in offered])

        second = answer_offer(client, offer, "the second one")
        assert second.model_extra["memory_outcome"] == VERIFIED
        assert second.model_extra["memory_correction_ids"] == [offered[1]]
        assert second.choices[0].message.content == answers[offered[1]]
        assert answer_offer(client, offer, "none of them").model_extra["memory_outcome"] == HANDOFF
        with Session(app.state.db) as session:  # the pick is a confirmed wording of the second question's correction
            confirmed = confirmed_wordings(session, app.state.settings, approved_corrections(session))
        assert confirmed == [LabelledQuestion(REWORDED, offered[1])]
