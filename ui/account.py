"""The signed-in person's own account: change the password (staff and admin pages)."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from tuneloop.core.accounts import service as accounts
from tuneloop.core.db import session_scope
from ui.auth import PageSignIn
from ui.errors import shown_to_user


def password_tab(app: FastAPI, sign_in: PageSignIn) -> None:
    """A "Change password" form; the current password is asked again, so an unlocked screen is not enough."""
    current = gr.Textbox(label="Current password", type="password", elem_id="current-password")
    new = gr.Textbox(label="New password (at least 8 characters)", type="password", elem_id="new-password")
    again = gr.Textbox(label="New password again", type="password", elem_id="new-password-again")
    change = gr.Button("Change password", elem_id="change-password")
    result = gr.Markdown(elem_id="password-result")

    def run(current_password, new_password, repeated, request: gr.Request):
        return (*_change(app, sign_in, request, current_password, new_password, repeated),)

    change.click(run, inputs=[current, new, again], outputs=[result, current, new, again])


def _change(app: FastAPI, sign_in: PageSignIn, request, current: str, new: str, repeated: str):
    account = sign_in.account(request)
    if new != repeated:
        raise gr.Error("The two new passwords differ; type the same one twice.")
    with shown_to_user(), session_scope(app.state.db) as session:
        accounts.change_password(session, account.username, new or "", actor=account.username,
                                 current_password=current or "")
    return "Password changed; use the new one next time you sign in.", "", "", ""
