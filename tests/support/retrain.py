"""Helpers shared by the retraining tests (not fixtures of our code: real app, real worker)."""

from __future__ import annotations

import json

from sqlmodel import Session, select

from tuneloop.core.accounts.models import Account


def admin_key(engine) -> str:
    from tuneloop.core.accounts.service import create_api_key

    with Session(engine, expire_on_commit=False) as session:
        admin = session.exec(select(Account).where(Account.username == "admin")).one()
        _record, key = create_api_key(session, admin, "tests")
        session.commit()
    return key


def chat_jsonl(n: int = 4) -> bytes:
    lines = [{"messages": [{"role": "system", "content": "You help Acme customers."},
                           {"role": "user", "content": f"What is rule {i}?"},
                           {"role": "assistant", "content": f"Rule {i}: returns within {30 + i} days."}]}
             for i in range(n)]
    return "\n".join(json.dumps(line) for line in lines).encode()
