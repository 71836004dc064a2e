"""The admin page's "Company" tab: the first-start questions of `tuneloop init` (company name,
persona, published contacts), for admins who start from the browser. Saved as settings in ``.env``
and applied to this process at once; other processes (the worker, more API workers) read it when
they restart."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from tuneloop.core.company import CompanyProfile, save_profile
from ui.auth import PageSignIn
from ui.errors import shown_to_user

FIELDS = [("company_name", "Company name"), ("bot_persona", "The bot is"),
          ("company_hotline", "Published hotline"), ("company_email_domain", "E-mail domain (example.com)"),
          ("company_website", "Web address")]


def company_tab(app: FastAPI, sign_in: PageSignIn, env_file: Path = Path(".env")) -> None:
    settings = app.state.settings
    gr.Markdown("Who the bot speaks for. The contacts are your company's own: they are never masked as "
                "personal data in corrections or training data.")
    boxes = [gr.Textbox(label=label, value=getattr(settings, name), elem_id=f"company-{name}")
             for name, label in FIELDS]
    save = gr.Button("Save", variant="primary", elem_id="company-save")
    result = gr.Markdown(elem_id="company-result")

    def run(*values, request: gr.Request):
        return _save(app, sign_in, request, env_file, *values)

    save.click(run, inputs=boxes, outputs=result)


def _save(app: FastAPI, sign_in: PageSignIn, request, env_file: Path, *values: str) -> str:
    account = sign_in.account(request)
    profile = CompanyProfile(*((v or "").strip() for v in values))
    if not profile.company_name:
        raise gr.Error("The company name must not be empty.")
    with shown_to_user():
        path = save_profile(profile, env_file)
    for name, _label in FIELDS:  # this process at once
        setattr(app.state.settings, name, getattr(profile, name))
    return (f"Saved by {account.username} to `{path}`. Restart the worker (and other API processes) so they "
            "use it too.")
