"""Retention: old conversations are purged with what hangs off them while approved corrections stay
(unlinked), and one end user can be forgotten, with an audit event that does not name them."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlmodel import Session, select

from tuneloop.core import db
from tuneloop.core.ids import utcnow


def add_conversation(session, end_user: str, age_days: float, *, correction_status: str | None = None):
    from bot.models import Conversation, Message
    from feedback.corrections.models import Correction
    from feedback.ratings.models import Rating
    from feedback.decisions import ReviewDecision

    when = utcnow() - timedelta(days=age_days)
    conv = Conversation(end_user=end_user, created_at=when, updated_at=when)
    session.add(conv)
    session.flush()
    question = Message(conversation_id=conv.id, position=0, role="user", content="Where is my order?")
    answer = Message(conversation_id=conv.id, position=1, role="assistant", content="No idea.", model_version_id="v0")
    session.add_all([question, answer])
    session.flush()
    session.add(Rating(message_id=answer.id, value=-1, rater=end_user, model_version_id="v0"))
    session.add(ReviewDecision(message_id=answer.id, status="corrected", decided_by="ann"))
    if correction_status:
        session.add(Correction(lineage_id=f"lin_{conv.id}", message_id=answer.id, conversation_id=conv.id,
                               question="Where is my order?", answer="Track it at /orders.",
                               status=correction_status, author="ann"))
    session.flush()
    return conv


def test_purge_expired_keeps_recent_conversations_and_approved_corrections(make_settings, database_url):
    from bot.models import Conversation, Message
    from feedback.corrections.models import Correction
    from feedback.ratings.models import Rating
    from feedback.decisions import ReviewDecision
    from tuneloop.core.accounts.models import AuditEvent
    from tuneloop.app import prepare_database
    from feedback.retention import purge_expired

    settings = make_settings(database_url=database_url, retention_days=30)
    engine = prepare_database(settings)
    with db.session_scope(engine) as session:
        old_approved = add_conversation(session, "alice", 45, correction_status="approved")
        add_conversation(session, "bob", 31, correction_status="submitted")
        recent = add_conversation(session, "carol", 29, correction_status="approved")
    with db.session_scope(engine) as session:
        counts = purge_expired(session, settings)
    assert counts == {"conversations": 2, "messages": 4, "ratings": 2, "review_decisions": 2,
                      "corrections_deleted": 1, "corrections_kept": 1}
    with Session(engine) as session:
        assert [c.id for c in session.exec(select(Conversation))] == [recent.id]
        assert len(session.exec(select(Message)).all()) == 2
        assert len(session.exec(select(Rating)).all()) == len(session.exec(select(ReviewDecision)).all()) == 1
        corrections = {c.conversation_id: c for c in session.exec(select(Correction))}
        assert set(corrections) == {None, recent.id}  # the approved one from alice's purged chat stays, unlinked
        assert corrections[None].message_id is None and corrections[None].answer == "Track it at /orders."
        assert old_approved.id not in corrections
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "retention.purged")).one()
        assert event.actor == "system" and event.detail["conversations"] == 2
    # Nothing left to purge; retention_days=0 keeps everything.
    with db.session_scope(engine) as session:
        assert purge_expired(session, settings)["conversations"] == 0
        assert purge_expired(session, make_settings(database_url=database_url, retention_days=0)) == {}
        assert purge_expired(session, settings, now=utcnow() + timedelta(days=365))["conversations"] == 1
    engine.dispose()


def test_forget_end_user_deletes_their_data_and_audits_it(make_settings, database_url):
    from bot.models import Conversation
    from feedback.ratings.models import Rating
    from tuneloop.core.accounts.models import AuditEvent
    from tuneloop.app import prepare_database
    from feedback.retention import forget_end_user

    settings = make_settings(database_url=database_url)
    engine = prepare_database(settings)
    with db.session_scope(engine) as session:
        add_conversation(session, "dave@example.com", 1)
        add_conversation(session, "dave@example.com", 2, correction_status="draft")
        kept = add_conversation(session, "erin", 1)
    with db.session_scope(engine) as session:
        counts = forget_end_user(session, "dave@example.com", actor="admin")
    assert counts["conversations"] == 2 and counts["messages"] == 4 and counts["ratings"] == 2
    assert counts["corrections_deleted"] == 1
    with Session(engine) as session:
        assert [c.id for c in session.exec(select(Conversation))] == [kept.id]
        assert [r.rater for r in session.exec(select(Rating))] == ["erin"]
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "end_user.forgotten")).one()
        assert event.actor == "admin"
        assert event.object_id == "sha256:" + hashlib.sha256(b"dave@example.com").hexdigest()
        assert "dave" not in str(event.detail)
    engine.dispose()


def test_users_forget_command(make_settings):
    import subprocess
    import sys

    from bot.models import Conversation
    from tuneloop.app import prepare_database

    settings = make_settings()
    engine = prepare_database(settings)
    with db.session_scope(engine) as session:
        add_conversation(session, "frank", 1)
    env = {"TUNELOOP_DATABASE_URL": settings.database_url, "TUNELOOP_DATA_DIR": str(settings.data_dir),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "users", "forget", "frank", "--yes",
                             "--actor", "admin"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "forgot 'frank': 1 conversations, 2 messages, 1 ratings" in result.stdout
    with Session(engine) as session:
        assert session.exec(select(Conversation)).all() == []
    engine.dispose()


def test_the_worker_scheduler_purges_expired_conversations_on_its_cron(make_settings, database_url, caplog):
    import logging

    from bot.models import Conversation
    from retrain.scheduler import RetrainScheduler, purge_tick
    from tuneloop.app import prepare_database

    settings = make_settings(database_url=database_url, retention_days=30, retention_cron="15 2 * * *")
    engine = prepare_database(settings)
    with db.session_scope(engine) as session:
        add_conversation(session, "gina", 45)
        recent = add_conversation(session, "hank", 1)
    scheduler = RetrainScheduler(settings, engine, holder="worker-a")
    scheduler.start()
    try:
        job = scheduler._scheduler.get_job("retention")
        assert "hour='2'" in str(job.trigger) and "minute='15'" in str(job.trigger)
        with caplog.at_level(logging.INFO, logger="retrain.scheduler"):
            job.func()  # what the cron fires at 02:15
        assert "retention: purged conversations idle for more than 30 days: 1 conversations, 2 messages" in caplog.text
        assert purge_tick(settings, engine, "worker-b") is None  # only the lease holder purges
    finally:
        scheduler.shutdown()
    with Session(engine) as session:
        assert [c.id for c in session.exec(select(Conversation))] == [recent.id]
    off = RetrainScheduler(make_settings(database_url=database_url, retention_days=0), engine, holder="worker-a")
    off.start()
    try:
        assert off._scheduler.get_job("retention") is None and off._scheduler.get_job("retrain") is not None
    finally:
        off.shutdown()
    engine.dispose()
