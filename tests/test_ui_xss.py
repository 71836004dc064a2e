"""The probe's HTML injection, in a real browser: an anonymous customer's chat message and rating
comment and a colleague's correction carry <img>, <svg>, <a> and Markdown images pointing at an
"attacker" server on this machine; a staff member opens them and the browser fetches nothing from it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.browser import browser, login, table_cell, ui_app, ui_server, ui_settings  # noqa: F401  (fixtures)

from tuneloop.core.db import session_scope

pytestmark = pytest.mark.browser


@pytest.fixture
def attacker():
    """A server that counts every request it gets: any hit is a leak from the staff browser."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


def payloads(base: str) -> str:
    return (f'Hello <img src="{base}/img.png"> <svg><image href="{base}/svg.png"/></svg> '
            f'<a href="{base}/a">click</a> ![x]({base}/md.png) <img src=x onerror="fetch(\'{base}/onerror\')">')


def test_staff_pages_show_injected_html_as_text_and_fetch_nothing(browser, ui_server, ui_app, attacker):  # noqa: F811
    from bot.conversations import start_turn
    from feedback.corrections.service import create_correction
    from feedback.corrections.models import CorrectionStatus
    from feedback.ratings.service import rate_message
    from tuneloop.core.accounts.models import Role
    from tuneloop.core.accounts.service import create_account

    base, hits = attacker
    text = payloads(base)
    turn = start_turn(ui_app.state.runtime, messages=[{"role": "user", "content": text}], channel="web",
                      end_user="web_attacker").wait()
    with session_scope(ui_app.state.db) as session:
        rate_message(session, message_id=turn.message_id, value="down", comment=text, rater="web_attacker")
        create_account(session, username="alice", password="alice-password", role=Role.staff)
        create_account(session, username="bob", password="bob-password", role=Role.staff)
        create_correction(session, ui_app.state.settings, actor="alice", question=text, answer=text,
                          status=CorrectionStatus.submitted)
    requested: list[str] = []

    bob = browser.new_page("bob")
    bob.on("request", lambda request: requested.append(request.url))
    login(bob, ui_server, "/staff", "bob", "bob-password")
    table_cell(bob, "queue", 0, 1).get_by_text("thumbs down").click()
    conversation = bob.locator("#review-conversation")
    conversation.get_by_text("/img.png").first.wait_for()  # the payload is shown, as text
    bob.locator("#review-details").get_by_text("onerror").wait_for()
    bob.get_by_role("tab", name="Approve corrections").click()
    table_cell(bob, "pending", 0, 1).get_by_text("alice").click()
    bob.locator("#pending-details").get_by_text("/md.png").first.wait_for()
    bob.wait_for_timeout(1500)  # time for any image or handler to fire
    assert bob.locator(f'img[src^="{base}"], image, svg image').count() == 0
    assert bob.locator(f'a[href^="{base}"]').count() == 0
    assert hits == [] and [u for u in requested if u.startswith(base)] == []


def test_the_public_chat_shows_injected_html_as_text_and_fetches_nothing(browser, ui_server, ui_app,  # noqa: F811
                                                                         attacker):
    """The payload typed into the web chat at / and into a rating comment, two turns of one anonymous
    conversation (the second needs the conversation's token, kept in the page's session); then a staff
    member opens it from the queue. Nothing reaches the attacker's server from either browser; on / it is
    the page's CSP (the probe found none) that holds back the Markdown image the chat renders."""
    from sqlmodel import Session, select

    from bot.models import Conversation, Message
    from tuneloop.core.accounts.models import Role
    from tuneloop.core.accounts.service import create_account

    base, hits = attacker
    text = payloads(base)
    requested: list[str] = []  # requests that completed (one the CSP refuses is reported, then fails)
    customer = browser.new_page("customer")
    customer.on("requestfinished", lambda request: requested.append(request.url))
    served = customer.goto(f"{ui_server}/")
    assert served.headers["x-frame-options"] == "DENY" and "img-src 'self'" in served.headers["content-security-policy"]
    for turns, question in enumerate((text, "And the <b>second</b> one?"), 1):
        _ask(ui_app, customer, question, turns)
    customer.locator("#chat .user.message").first.get_by_text("/img.png").wait_for()  # shown, as text
    customer.locator("#chat").get_by_role("button", name="Dislike").first.click()
    customer.get_by_text("Thanks for your feedback!").wait_for()
    customer.locator("#rating-comment textarea").fill(text)
    customer.get_by_role("button", name="Send comment").click()
    customer.get_by_text("Thanks, your comment was sent.").wait_for()
    with Session(ui_app.state.db) as session:
        [conversation] = session.exec(select(Conversation)).all()
        assert conversation.token_hash and conversation.owner_id is None  # anonymous, with its secret
        users = session.exec(select(Message).where(Message.role == "user").order_by(Message.position)).all()
        assert [m.content for m in users] == [text, "And the <b>second</b> one?"]

    with session_scope(ui_app.state.db) as session:
        create_account(session, username="carol", password="carol-password", role=Role.staff)
    staff = browser.new_page("carol")
    staff.on("requestfinished", lambda request: requested.append(request.url))
    login(staff, ui_server, "/staff", "carol", "carol-password")
    table_cell(staff, "queue", 0, 1).get_by_text("thumbs down").click()
    staff.locator("#review-conversation").get_by_text("/img.png").first.wait_for()
    staff.locator("#review-details").get_by_text("onerror").wait_for()
    for page in (customer, staff):
        page.wait_for_timeout(1500)  # time for any image or handler to fire
        assert page.locator(f'img[src="{base}/img.png"], img[src="x"], image, svg image').count() == 0  # no HTML
    # The chat keeps a customer's own Markdown (and links bare URLs), so ![x](…/md.png) is an <img> in their
    # bubble, as it would be in a model's answer coaxed into carrying the conversation in a URL: the CSP on /
    # is what keeps the browser from fetching it. The staff page shows all of it as text.
    assert staff.locator(f'img[src^="{base}"], a[href^="{base}"]').count() == 0
    assert hits == [] and [u for u in requested if u.startswith(base)] == []




def _ask(app, page, question: str, answers: int, attempts: int = 900) -> None:
    """Send ``question`` and wait until ``answers`` answers are recorded, bounded at 90 s. Sent again when
    the page did not take it: the model was still loading (the page says so and puts the question back in
    the box), or the previous answer's last update cleared the box just after it was filled."""
    from sqlmodel import Session, func, select

    from bot.models import Message

    box = page.locator("#question textarea")
    answered = select(func.count()).select_from(Message).where(Message.role == "assistant")
    for attempt in range(attempts):
        if attempt % 50 == 0:
            shown = page.locator("#chat .user.message").all_inner_texts()
            taken = len(shown) == answers and question[:12] in shown[-1]
            if not taken and not box.input_value():
                box.fill(question)
            if not taken or box.input_value():
                page.locator("#send").click()
        with Session(app.state.db) as session:
            if session.exec(answered).one() >= answers:
                return
        page.wait_for_timeout(100)
    page.screenshot(path="/tmp/tuneloop-xss-chat.png", full_page=True)
    raise AssertionError(f"{answers} answers were not recorded (screenshot: /tmp/tuneloop-xss-chat.png)")
