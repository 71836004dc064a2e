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
