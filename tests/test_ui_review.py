"""The staff page in a real browser: one staff member corrects a thumbs-down answer, a second one
approves it (seeing the other ways customers ask it), and the next dataset snapshot holds it in both
training formats."""

from __future__ import annotations

import json

import pytest
from support.browser import browser, login, table_cell, ui_app, ui_server, ui_settings  # noqa: F401  (fixtures)
from sqlmodel import Session

from tuneloop.core.db import session_scope

pytestmark = pytest.mark.browser

ANSWER = "Refunds take 5 business days. Questions: write to help@acme.example."


def _disliked_answer(app) -> str:
    """A web chat turn with a thumbs-down, made through the same service functions as the chat page."""
    from bot.conversations import start_turn
    from feedback.ratings.service import rate_message

    turn = start_turn(app.state.runtime, messages=[{"role": "user", "content": "How long do refunds take?"}],
                      channel="web", end_user="web_test").wait()
    with session_scope(app.state.db) as session:
        rate_message(session, message_id=turn.message_id, value="down", comment="wrong", rater="web_test")
    return turn.message_id


def test_correct_then_approve_reaches_snapshot(browser, ui_server, ui_app):  # noqa: F811
    from feedback.corrections.models import Correction, CorrectionStatus
    from retrain.datasets import create_snapshot, snapshot_dir
    from tuneloop.core.accounts.models import Role
    from tuneloop.core.accounts.service import create_account

    with session_scope(ui_app.state.db) as session:
        create_account(session, username="alice", password="alice-password", role=Role.staff)
        create_account(session, username="bob", password="bob-password", role=Role.staff)
    message_id = _disliked_answer(ui_app)

    alice = browser.new_page("alice")
    login(alice, ui_server, "/staff", "alice", "alice-password")
    table_cell(alice, "queue", 0, 1).get_by_text("thumbs down").wait_for()
    table_cell(alice, "queue", 0, 1).click()
    alice.locator("#review-conversation").get_by_text("How long do refunds take?").wait_for()
    assert alice.locator("#correction-question textarea").input_value() == "How long do refunds take?"
    alice.locator("#correction-answer textarea").fill(ANSWER)
    alice.locator("#correction-facts textarea").fill("5 business days")
    alice.locator("#correction-alternatives textarea").fill("How many days until my refund arrives?\n")
    alice.locator("#submit-correction").click()
    alice.locator("#review-result").get_by_text("submitted").wait_for()
    alice.screenshot(path="/tmp/tuneloop-staff-queue.png", full_page=True)

    bob = browser.new_page("bob")
    login(bob, ui_server, "/staff", "bob", "bob-password")
    bob.get_by_role("tab", name="Approve corrections").click()
    table_cell(bob, "pending", 0, 1).get_by_text("alice").click()
    bob.locator("#pending-details").get_by_text("email in answer").wait_for()  # a contact, not masked silently
    bob.locator("#pending-details").get_by_text("How many days until my refund arrives?").wait_for()
    bob.screenshot(path="/tmp/tuneloop-staff-approve.png", full_page=True)
    bob.locator("#mask-contacts").click()  # a customer's address, not the company's: mask it
    bob.locator("#approve-result").get_by_text("masked").wait_for()
    bob.locator("#approve-correction").click()
    bob.locator("#approve-result").get_by_text("approved").wait_for()

    with Session(ui_app.state.db) as session:
        correction = session.query(Correction).filter_by(message_id=message_id).one()
    assert (correction.status, correction.author, correction.reviewer) == (CorrectionStatus.approved, "alice", "bob")
    assert correction.answer == "Refunds take 5 business days. Questions: write to [EMAIL]."
    assert correction.alternative_questions == ["How many days until my refund arrives?"]
    with session_scope(ui_app.state.db) as session:
        snapshot = create_snapshot(session, ui_app.state.settings, "test")
        folder = snapshot_dir(ui_app.state.settings, snapshot)
    chat = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    legacy = [json.loads(line) for line in (folder / "train.prompt_completion.jsonl").read_text().splitlines()]
    assert any(m["content"] == correction.answer for row in chat for m in row["messages"])
    assert any(correction.answer in row["completion"] for row in legacy)
