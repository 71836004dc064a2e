"""Helpers shared by the retraining tests (not fixtures of our code: real app, real worker)."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

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


@contextmanager
def job_running(app, client, job_id: str, steps: int = 2):
    """The real worker runs the next job in a thread; entered once ``job_id`` has trained ``steps``
    steps, yields the thread; on exit the worker is told to stop (a job still running fails) and joined."""
    from retrain.worker import Worker
    from support.servers import wait_until

    worker = Worker(app.state.settings, app.state.db)
    thread = threading.Thread(target=worker.run_next_job)
    thread.start()
    try:
        wait_until(lambda: sum(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id).data) >= steps)
        yield thread
    finally:
        worker.stop_event.set()
        thread.join()
