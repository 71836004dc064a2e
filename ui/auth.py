"""Sign-in for the staff and admin pages: gradio's own login form (a cookie per mounted page),
checked against tuneloop accounts with ``authenticate_password`` and the page's required role.

gradio keeps its login tokens in this process's memory, so the account captured at sign-in is kept
beside them for exactly as long: callbacks ask ``account(request)`` for who is acting.
"""

from __future__ import annotations

import gradio as gr
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Account, Role


class NotSignedIn(gr.Error):
    def __init__(self):
        super().__init__("Your sign-in has expired; reload the page and sign in again.")


class PageSignIn:
    """The ``auth`` callable of one mounted page: valid password and at least ``role``."""

    def __init__(self, db: Engine, role: Role):
        self.db = db
        self.role = role
        self._accounts: dict[str, Account] = {}

    def __call__(self, username: str, password: str) -> bool:
        with Session(self.db, expire_on_commit=False) as session:
            account = accounts.authenticate_password(session, username, password)
        if account is None or not accounts.has_role(account, self.role):
            return False
        self._accounts[account.username] = account
        return True

    def account(self, request: gr.Request) -> Account:
        account = self._accounts.get(getattr(request, "username", None) or "")
        if account is None:
            raise NotSignedIn()
        return account

    @property
    def message(self) -> str:
        return f"Sign in with your tuneloop {self.role.value} account."
