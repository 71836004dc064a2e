"""Gradio pages (web chat, review, admin), mounted into the FastAPI app. UI callbacks call the same
service functions as the API; they never touch the ORM directly.

``/`` is the public chat; ``/staff`` (review) and ``/admin`` sit behind gradio's login form, checked
against tuneloop accounts (see ``ui.auth``). The chat is mounted last: a mount at ``/`` catches every
path that nothing before it matched.
"""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from tuneloop.core.accounts.models import Role
from tuneloop.core.settings import Settings
from ui.admin import build_admin
from ui.auth import PageSignIn
from ui.chat import build_chat
from ui.headers import PageHeaders
from ui.review import build_review
from ui.theme import CSS, theme

# No footer links (API docs, settings, run history) and no run history kept in the browser:
# end users' questions should not linger in a shared browser.
_COMMON = dict(footer_links=[], run_history=False, ssr_mode=False, show_error=False, mcp_server=False)

# Gradio's queue looks for work every 1 ms while idle (and for progress every 10 ms), once per page:
# an idle server with our three pages spent ~10% of a core waking up (strace: ~1,300 epoll_wait a second).
# 20 ms is far below the time to a reply's first token; progress bars need no more than 10 a second.
IDLE_POLL_SECONDS, PROGRESS_POLL_SECONDS = 0.02, 0.1


def poll_less_when_idle(blocks: gr.Blocks) -> gr.Blocks:
    """Slow the idle polling of a page's event queue (``gradio.queueing.Queue``'s sleeps when free)."""
    blocks._queue.sleep_when_free = IDLE_POLL_SECONDS
    blocks._queue.progress_update_sleep_when_free = PROGRESS_POLL_SECONDS
    return blocks


def mount_ui(app: FastAPI, settings: Settings) -> FastAPI:

    staff = PageSignIn(app.state.db, Role.staff)
    admin = PageSignIn(app.state.db, Role.admin)
    look = dict(theme=theme(), css=CSS)
    for page, path, sign_in in ((build_review(app, staff), "/staff", staff), (build_admin(app, admin), "/admin", admin),
                                (build_chat(app), "/", None)):  # the chat last: "/" catches every other path
        auth = dict(auth=sign_in, auth_message=sign_in.message) if sign_in else {}
        gr.mount_gradio_app(app, poll_less_when_idle(page), path, **auth, **look, **_COMMON)

    app.add_middleware(PageHeaders)  # CSP + X-Frame-Options on every page; /staff -> /staff/
    return app
