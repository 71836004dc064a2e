"""`tuneloop demo`: load the bundled Acme Outdoor Gear knowledge base into this instance, the way real
traffic would arrive, so a new user sees the whole loop within minutes:

1. a customer asks each canonical question and the current model answers (real generation);
2. the customer gives the answer a thumbs-down;
3. staff member ``alice`` writes the correct answer; ``bob`` approves most of them (a few are left
   submitted so the review page has work in it);
4. then: open /admin and press "Train now" (or run `tuneloop jobs create`), watch the gates, promote.

The held-out paraphrases in examples/acme_kb.jsonl are never loaded: the benchmark uses them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from sqlmodel import select
from tqdm import tqdm

from tuneloop.core.settings import get_settings

demo_app = typer.Typer()
KB_PATH = Path(__file__).resolve().parents[2] / "examples" / "acme_kb.jsonl"
DEMO_STAFF = {"alice": "alice-demo-password", "bob": "bob-demo-password"}


def load_kb(path: Path = KB_PATH) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ensure_staff(db) -> None:
    from tuneloop.core.accounts.models import Account, Role
    from tuneloop.core.accounts.service import create_account
    from tuneloop.core.db import session_scope

    with session_scope(db) as session:
        for name, password in DEMO_STAFF.items():
            if not session.exec(select(Account).where(Account.username == name)).first():
                create_account(session, username=name, password=password, role=Role.staff, actor="demo")


def ask_all(runtime, questions: list[str]) -> list[str]:
    """Ask every question as its own customer conversation; the engine batches them."""
    from bot.conversations import start_turn

    def ask(question: str) -> str:
        return start_turn(runtime, messages=[{"role": "user", "content": question}], channel="demo",
                          end_user="demo-customer").wait().message_id

    with ThreadPoolExecutor(max_workers=runtime.settings.max_batch_size) as pool:
        return list(tqdm(pool.map(ask, questions), total=len(questions), desc="customers asking", unit="q"))


def correct_all(db, settings, facts: list[dict], message_ids: list[str], leave_pending: int) -> tuple[int, int]:
    from feedback.corrections.service import approve_correction, create_correction, submit_correction
    from feedback.corrections.models import CorrectionStatus
    from feedback.ratings.service import rate_message
    from tuneloop.core.db import session_scope

    approved = pending = 0
    for i, (fact, message_id) in enumerate(tqdm(list(zip(facts, message_ids)), desc="reviewing", unit="q")):
        with session_scope(db) as session:
            rate_message(session, message_id=message_id, value="down", comment="wrong answer", rater="demo-customer")
            correction = create_correction(session, settings, actor="alice", answer=fact["answer"],
                                           message_id=message_id, key_facts=fact["key_facts"],
                                           status=CorrectionStatus.draft)
            submit_correction(session, correction.id, actor="alice")
            if i < len(facts) - leave_pending:
                approve_correction(session, settings, correction.id, actor="bob")
                approved += 1
            else:
                pending += 1
    return approved, pending


@demo_app.command("demo")
def demo(
    limit: int = typer.Option(0, help="Load only the first N facts (0: all 60)."),
    leave_pending: int = typer.Option(3, help="Corrections left waiting for approval on the review page."),
) -> None:
    """Load the Acme Outdoor Gear demo: customer questions, thumbs-down, corrections and approvals."""
    from bot.runtime import ServingRuntime
    from tuneloop.app import prepare_database

    from tuneloop.core.company import DEMO_PROFILE, is_configured, save_profile

    settings = get_settings()
    if not is_configured(settings):  # the demo company's voice and contacts, only here
        path = save_profile(DEMO_PROFILE)
        get_settings.cache_clear()
        settings = get_settings()
        typer.echo(f"demo: using the demo company {DEMO_PROFILE.company_name!r} (saved to {path}; "
                   "run `tuneloop init` for your own)")
    facts = load_kb()[: limit or None]
    db = prepare_database(settings)
    ensure_staff(db)
    runtime = ServingRuntime(settings, db)
    typer.echo("loading the production model...")
    runtime.start(background=False)
    try:
        message_ids = ask_all(runtime, [f["question"] for f in facts])
    finally:
        runtime.stop()
    approved, pending = correct_all(db, settings, facts, message_ids, min(leave_pending, len(facts)))
    typer.echo(
        f"\nLoaded {len(facts)} customer conversations with thumbs-down; {approved} corrections approved, "
        f"{pending} waiting for review.\n"
        f"Staff logins: alice / {DEMO_STAFF['alice']}, bob / {DEMO_STAFF['bob']} (review page: /staff).\n"
        "Next: `tuneloop worker` in another terminal, then 'Train now' on /admin "
        "(or `tuneloop jobs create`), watch the gates, and promote."
    )
