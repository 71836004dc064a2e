"""Correction memory: each user turn is verified (the approved answer itself, streamed like any
reply, with honest usage), handoff (honest "passed to our team", see test_memory_selection.py),
grounded (approved answers in the prompt) or none; the outcome, the corrections and their scores are
logged on the message; follow-ups never get a canned answer; ``store: false`` leaves no trace."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer
from sqlmodel import Session, func, select

from bot.models import Conversation, Message
from feedback.corrections.service import approve_correction, create_correction, submit_correction
from bot.clarify import clarify_reply
from feedback.memory.service import CLARIFY, GROUNDED, HANDOFF, NONE, VERIFIED, CorrectionMemory
from tuneloop.core.accounts.models import Role
from tuneloop.core.accounts.service import create_account
from tuneloop.core.db import session_scope

RETURNS = ("How long do I have to return an item?", "You can return unused items within 45 days of delivery.")
TUNEUP = ("How much is a bike tune-up?", "A standard bike tune-up costs $65 and takes two days.")
KAYAKS = ("Do you rent kayaks?", "Yes, kayaks rent for $40 a day at the Boulder store.")
WARRANTY = ("How long is the warranty on tents?", "Tents have a lifetime warranty against manufacturing defects.")


def approve(app, *pairs: tuple[str, str], alternatives: dict[int, list[str]] | None = None) -> list[str]:
    """Approve each (question, answer) through the two-person rule; ``alternatives`` by position."""
    settings, db = app.state.settings, app.state.db
    with session_scope(db) as session:
        for name in ("writer", "checker"):
            create_account(session, username=name, password="password-123", role=Role.staff)
    ids = []
    with session_scope(db) as session:
        for i, (question, answer) in enumerate(pairs):
            correction = create_correction(session, settings, actor="writer", question=question, answer=answer,
                                           alternative_questions=(alternatives or {}).get(i, []))
            submit_correction(session, correction.id, actor="writer")
            approve_correction(session, settings, correction.id, actor="checker")
            ids.append(correction.id)
    app.state.runtime.memory.refresh(force=True)
    return ids


def _app(make_settings, tiny_model_dir, **overrides):
    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), **overrides), load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    return app


def _client(app):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    http = TestClient(app)
    return http, OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)


def test_confident_match_is_answered_with_the_approved_text_streamed_with_usage(tiny_app, openai_client):
    [returns_id, _] = approve(tiny_app, RETURNS, TUNEUP)
    tokenizer = AutoTokenizer.from_pretrained(tiny_app.state.settings.base_model)  # the served model's
    reply = openai_client.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": "How long do I have to return an item?"}])
    assert reply.choices[0].message.content == RETURNS[1]
    assert reply.model_extra["memory_outcome"] == VERIFIED and reply.model_extra["memory_correction_ids"] == [returns_id]
    answer_tokens = len(tokenizer(RETURNS[1], add_special_tokens=False)["input_ids"])
    assert reply.usage.completion_tokens == answer_tokens and reply.usage.prompt_tokens > 10
    assert reply.choices[0].finish_reason == "stop"
    with Session(tiny_app.state.db) as session:
        stored = session.get(Message, reply.model_extra["message_id"])
        assert (stored.content, stored.memory_outcome, stored.memory_correction_ids) == (RETURNS[1], VERIFIED, [returns_id])
        assert stored.memory_scores[0]["correction_id"] == returns_id and stored.memory_scores[0]["score"] > 0.8
        assert len(stored.memory_scores) == 2 and stored.memory_scores[1]["score"] < stored.memory_scores[0]["score"]
    from feedback.review.service import item_as_dict, review_item

    with Session(tiny_app.state.db) as session:  # a reviewer sees that the reply was the correction's own text
        item = item_as_dict(review_item(session, reply.model_extra["message_id"]))
    assert (item["memory_outcome"], item["memory_correction_ids"]) == (VERIFIED, [returns_id])

    stream = openai_client.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": "How long do I have to return an item?"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3 and "".join(deltas) == RETURNS[1]  # word by word, like a decoded answer
    assert chunks[-1].usage.completion_tokens == answer_tokens
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens

    short = openai_client.chat.completions.create(
        model="tuneloop", max_tokens=3, messages=[{"role": "user", "content": "How long do I have to return an item?"}])
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert RETURNS[1].startswith(short.choices[0].message.content)


def test_unrelated_question_is_left_to_the_model(tiny_app, openai_client):
    approve(tiny_app, RETURNS, TUNEUP)
    reply = openai_client.chat.completions.create(
        model="tuneloop", max_tokens=4, messages=[{"role": "user", "content": "Tell me a joke about penguins"}])
    assert reply.model_extra["memory_outcome"] == NONE and reply.model_extra["memory_correction_ids"] == []
    assert reply.choices[0].message.content != RETURNS[1]
    with Session(tiny_app.state.db) as session:
        stored = session.get(Message, reply.model_extra["message_id"])
        assert stored.memory_outcome == NONE and stored.memory_scores  # scores are logged even when unused


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_verified_switched_off_grounds_the_model_instead(make_settings, tiny_model_dir, database_url):
    app = _app(make_settings, tiny_model_dir, database_url=database_url, memory_verified_enabled=False,
               memory_grounded_enabled=True)
    try:
        [returns_id, _] = approve(app, RETURNS, TUNEUP)
        http, client = _client(app)
        with http:
            reply = client.chat.completions.create(
                model="tuneloop", max_tokens=4, messages=[{"role": "user", "content": RETURNS[0]}])
        assert reply.model_extra["memory_outcome"] == GROUNDED
        assert reply.model_extra["memory_correction_ids"][0] == returns_id
        assert reply.usage.completion_tokens <= 4  # decoded by the model, not the approved text
    finally:
        app.state.runtime.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_outcome_is_a_setting(make_settings, database_url):
    """The same question gets each outcome as the settings allow: verified when selection is confident,
    else a clarifying question when it is likely, else grounded (when on), else handoff (when on), else none;
    below the topic threshold, none."""
    from tuneloop.app import prepare_database

    base = dict(database_url=database_url, allow_self_approval=True, memory_clarify_probability=1.0,
                memory_clarify_choice_probability=1.0)
    engine = prepare_database(make_settings(**base))
    with session_scope(engine) as session:
        [tuneup_id, kayaks_id] = [create_correction(session, make_settings(**base), actor="a", question=q, answer=a,
                                            status="approved").id for q, a in (TUNEUP, KAYAKS)]
    question = [{"role": "user", "content": "What does a tune-up for my bike cost?"}]

    def outcome(**overrides):
        decision = CorrectionMemory(make_settings(**{**base, **overrides}), engine).decide(question)
        return decision.outcome, decision.correction_ids, decision.answer

    assert outcome(memory_verified_probability=0.0) == (VERIFIED, [tuneup_id], TUNEUP[1])
    offer = clarify_reply(make_settings(**base), [TUNEUP[0]])
    assert outcome(memory_verified_probability=1.0, memory_clarify_probability=0.0) == (CLARIFY, [tuneup_id], offer)
    listed = outcome(memory_verified_probability=1.0, memory_clarify_choice_probability=0.0)
    questions = {tuneup_id: TUNEUP[0], kayaks_id: KAYAKS[0]}
    assert listed[0] == CLARIFY and set(listed[1]) == {tuneup_id, kayaks_id}
    assert listed[2] == clarify_reply(make_settings(**base), [questions[cid] for cid in listed[1]])
    assert outcome(memory_verified_probability=1.0, memory_clarify_probability=0.0,
                   memory_clarify_enabled=False)[0] == HANDOFF
    assert outcome(memory_verified_probability=1.0, memory_grounded_enabled=True)[:2] == (GROUNDED, [tuneup_id, kayaks_id])
    handoff = make_settings(**base).memory_handoff_reply
    assert outcome(memory_verified_probability=1.0) == (HANDOFF, [], handoff)
    assert outcome(memory_verified_probability=1.0, memory_handoff_enabled=False) == (NONE, [], "")
    assert outcome(memory_verified_probability=1.0, memory_topic_threshold=1.0) == (NONE, [], "")
    assert outcome(memory_verified_enabled=False, memory_verified_probability=0.0) == (HANDOFF, [], handoff)
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_follow_up_never_gets_a_canned_answer(make_settings, database_url):
    """Thresholds low enough that "And how much does that cost?" alone is verified as the tune-up price:
    after a question about kayaks it must not be."""
    from tuneloop.app import prepare_database

    settings = make_settings(database_url=database_url, memory_verified_probability=0.05, memory_topic_threshold=-1.0,
                             memory_max_hits=3, memory_grounded_enabled=True, allow_self_approval=True,
                             memory_clarify_enabled=False)
    engine = prepare_database(settings)
    with session_scope(engine) as session:
        ids = [create_correction(session, settings, actor="a", question=q, answer=a, status="approved").id
               for q, a in (TUNEUP, KAYAKS, WARRANTY)]
    memory = CorrectionMemory(settings, engine)
    follow_up = "And how much does that cost?"
    alone = memory.decide([{"role": "user", "content": follow_up}])
    assert alone.outcome == VERIFIED and alone.correction_ids == [ids[0]]  # the premise: on its own it would be

    history = [{"role": "user", "content": KAYAKS[0]}, {"role": "assistant", "content": KAYAKS[1]}]
    decision = memory.decide([*history, {"role": "user", "content": follow_up}])
    assert decision.outcome != VERIFIED and decision.reason.startswith("follow-up")
    assert decision.outcome == GROUNDED and ids[1] in decision.correction_ids  # retrieved with its context

    standalone = memory.decide([*history, {"role": "user", "content": WARRANTY[0]}])
    assert standalone.outcome == VERIFIED and standalone.correction_ids == [ids[2]]
    engine.dispose()


def _counts(app) -> tuple[int, int]:
    with Session(app.state.db) as session:
        return (session.exec(select(func.count(Conversation.id))).one(),
                session.exec(select(func.count(Message.id))).one())


def test_store_false_leaves_no_trace(tiny_app, openai_client):
    approve(tiny_app, RETURNS)
    before = _counts(tiny_app)
    reply = openai_client.chat.completions.create(
        model="tuneloop", max_tokens=4, store=False, messages=[{"role": "user", "content": "Do you ship to Canada?"}])
    assert reply.id.startswith("chatcmpl-") and reply.choices[0].message.content is not None
    assert reply.model_extra["conversation_id"] is None and reply.model_extra["message_id"] is None
    chunks = list(openai_client.chat.completions.create(
        model="tuneloop", store=False, stream=True, messages=[{"role": "user", "content": RETURNS[0]}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == RETURNS[1]
    assert all(c.model_extra["message_id"] is None for c in chunks)
    assert _counts(tiny_app) == before

    stored = openai_client.chat.completions.create(
        model="tuneloop", max_tokens=4, messages=[{"role": "user", "content": "Hello"}])
    after_stored = _counts(tiny_app)
    again = openai_client.chat.completions.create(
        model="tuneloop", max_tokens=4, store=False, extra_body={"conversation_id": stored.model_extra["conversation_id"],
                                                                "conversation_token": stored.model_extra["conversation_token"]},
        messages=[{"role": "user", "content": "And one more thing"}])
    assert again.model_extra["conversation_id"] == stored.model_extra["conversation_id"]  # it exists
    assert again.model_extra["message_id"] is None and _counts(tiny_app) == after_stored


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_decide_and_calibration_endpoints(make_settings, database_url):
    from fastapi.testclient import TestClient

    from tuneloop.core.accounts import service as accounts
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=database_url), load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        staff = accounts.create_api_key(session, accounts.create_account(
            session, username="alice", password="password1", role=Role.staff))[1]
        admin = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
        returns_id = create_correction(session, app.state.settings, actor="bob", question=RETURNS[0], answer=RETURNS[1],
                                       alternative_questions=["What is your return window?"], status="approved").id
    as_staff, as_admin = {"Authorization": f"Bearer {staff}"}, {"Authorization": f"Bearer {admin}"}
    with TestClient(app) as http:
        decided = http.post("/v1/memory/decide", headers=as_staff,
                            json={"messages": [{"role": "user", "content": RETURNS[0]}]})
        assert decided.status_code == 200, decided.text
        assert decided.json()["outcome"] == VERIFIED and decided.json()["correction_ids"] == [returns_id]
        bad = http.post("/v1/memory/decide", headers=as_staff, json={"messages": [{"role": "assistant", "content": "x"}]})
        assert bad.status_code == 400 and "last message must come from the user" in bad.json()["error"]["message"]
        assert http.get("/v1/memory/calibration", headers=as_staff).status_code == 403
        report = http.get("/v1/memory/calibration?target_precision=0.95", headers=as_admin).json()
        assert report["object"] == "memory.calibration" and report["positives"] == 1
        assert report["target_precision"] == 0.95 and len(report["points"]) == 18
        assert not report["fitted"] and report["saved_for"] is None  # one phrasing is too little to fit on
    assert _counts(app) == (0, 0)  # deciding logs nothing
    app.state.db.dispose()


def test_chats_asked_together_right_after_an_approval_all_get_it(tiny_app):
    """The one search that rebuilds the index is not the only one to see the new correction: the
    others asked at the same moment wait for the rebuild instead of answering from the old index."""
    import threading
    import time

    memory = CorrectionMemory(tiny_app.state.settings, tiny_app.state.db, refresh_seconds=0.5)
    assert memory.search(RETURNS[0]) == []  # nothing approved yet: the index is built empty
    [returns_id] = approve(tiny_app, RETURNS)
    time.sleep(0.6)  # the next search checks the approved set again
    start, best = threading.Barrier(8), []

    def ask() -> None:
        start.wait()
        best.append(memory.search(RETURNS[0])[0].correction_id)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert best == [returns_id] * 8
