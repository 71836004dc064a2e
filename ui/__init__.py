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
from ui.headers import SignedInPageHeaders
from ui.review import build_review
from ui.theme import CSS, theme

# No footer links (API docs, settings, run history) and no run history kept in the browser:
# end users' questions should not linger in a shared browser.
_COMMON = dict(footer_links=[], run_history=False, ssr_mode=False, show_error=False, mcp_server=False)


def mount_ui(app: FastAPI, settings: Settings) -> FastAPI:

    staff = PageSignIn(app.state.db, Role.staff)
    admin = PageSignIn(app.state.db, Role.admin)
    look = dict(theme=theme(), css=CSS)
    gr.mount_gradio_app(app, build_review(app, staff), "/staff", auth=staff, auth_message=staff.message,
                        **look, **_COMMON)
    gr.mount_gradio_app(app, build_admin(app, admin), "/admin", auth=admin, auth_message=admin.message,
                        **look, **_COMMON)
    gr.mount_gradio_app(app, build_chat(app), "/", **look, **_COMMON)

    app.add_middleware(SignedInPageHeaders)  # CSP + X-Frame-Options on /staff and /admin; /staff -> /staff/
    return app
