"""The retraining scheduler: on ``settings.retrain_cron`` it snapshots the approved data and starts a
job when at least ``retrain_min_new_examples`` examples arrived since the last successful job. The
job trains as ``settings.retrain_method`` says: supervised, or supervised then DPO on the snapshot's
corrections as preference pairs (``retrain.jobs.child``), one adapter either way.

It runs inside the worker (APScheduler's BackgroundScheduler). With several workers exactly one
schedules: each tick first takes the lease row in ``SchedulerState`` (an atomic UPDATE that succeeds
only when the lease expired or is already ours) and, on PostgreSQL, ``pg_try_advisory_lock`` too.
Every tick records its decision ("skipped: 7 new examples, need 20") and the next run time.

The same lease holder also runs the data-retention purge (``feedback.retention.purge_expired``) on
``settings.retention_cron``, daily by default; ``retention_days=0`` turns it off.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from feedback.retention import purge_expired
from retrain.datasets import SPLITS, create_snapshot, get_snapshot, new_since
from retrain.jobs import service as jobs
from retrain.jobs.job_request import JobRequest, scheduled_method
from retrain.jobs.leftovers import remove_snapshot_files
from retrain.models import DatasetSnapshot, FineTuneJob, JobStatus, SchedulerState
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

LEASE_SECONDS = 120
ADVISORY_LOCK_KEY = 0x7475_6E65  # "tune"


def acquire_lease(db: Engine, holder: str, *, seconds: float = LEASE_SECONDS) -> bool:
    """Take or renew the scheduler lease; True if ``holder`` holds it now."""
    now = utcnow()
    with session_scope(db) as session:
        if session.get(SchedulerState, 1) is None:
            try:
                with session.begin_nested():
                    session.add(SchedulerState(id=1))
            except IntegrityError:
                pass
        result = session.exec(update(SchedulerState).where(
            SchedulerState.id == 1,
            (col(SchedulerState.holder).is_(None)) | (SchedulerState.holder == holder)
            | (col(SchedulerState.lease_expires_at) < now),
        ).values(holder=holder, lease_expires_at=now + timedelta(seconds=seconds)))
        return result.rowcount == 1


def new_examples_since_last_success(session: Session, settings: Settings, snapshot) -> int:
    """Examples of ``snapshot`` (both splits) that the last successful job's snapshot did not hold
    (``retrain.datasets.new_since``)."""
    last = session.exec(select(FineTuneJob).where(FineTuneJob.status == JobStatus.succeeded,
                                                  col(FineTuneJob.snapshot_id).is_not(None))
                        .order_by(col(FineTuneJob.finished_at).desc())).first()
    earlier = [get_snapshot(session, last.snapshot_id)] if last is not None else []
    return len(new_since(settings, snapshot, earlier, splits=SPLITS))


def decide(session: Session, settings: Settings) -> tuple[str, FineTuneJob | None]:
    """One tick's work: snapshot, count what is new, maybe start a job. Returns (decision, job)."""
    active = session.exec(select(FineTuneJob).where(col(FineTuneJob.status).in_(jobs.ACTIVE))).first()
    if active is not None:
        return f"skipped: job {active.id} is still {active.status}", None
    snapshot = create_snapshot(session, settings, "scheduler")
    new = new_examples_since_last_success(session, settings, snapshot)
    need = settings.retrain_min_new_examples
    if new < need:
        return f"skipped: {new} new examples, need {need}", None
    job = jobs.create_job(session, settings, JobRequest(snapshot_id=snapshot.id, method=scheduled_method(settings)),
                          actor="scheduler")
    return f"started {job.id}: {new} new examples in {snapshot.id}", job


def tick(settings: Settings, db: Engine, holder: str) -> str:
    """Run one scheduled decision if ``holder`` holds the lease; record it in SchedulerState."""
    if not acquire_lease(db, holder):
        return "not the scheduler: another worker holds the lease"
    try:
        with session_scope(db) as session:
            decision, _job = decide(session, settings)
    except Exception as exc:  # noqa: BLE001  (recorded and shown; the next tick tries again)
        log.exception("scheduled retraining failed")
        decision = f"error: {exc}"
    with session_scope(db) as session:
        session.exec(update(SchedulerState).where(SchedulerState.id == 1)
                     .values(last_tick_at=utcnow(), last_decision=decision))
    log.info("scheduler: %s", decision)
    return decision


def purge_tick(settings: Settings, db: Engine, holder: str) -> dict[str, int] | None:
    """Run the retention purge if ``holder`` holds the lease. Returns what was deleted, or None when
    another worker holds the lease (it purges instead)."""
    if not acquire_lease(db, holder):
        return None
    with session_scope(db) as session:
        counts = purge_expired(session, settings)
    if counts.get("conversations"):
        log.info("retention: purged conversations idle for more than %d days: %s", settings.retention_days,
                 ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    else:
        log.info("retention: nothing older than %d days to purge", settings.retention_days)
    return counts


def train_now(session: Session, settings: Settings, actor: str) -> FineTuneJob:
    """Snapshot the approved data and start a job now, whatever the threshold. A job that cannot start
    leaves no snapshot files behind (its snapshot row rolls back with it)."""

    known = set(session.exec(select(DatasetSnapshot.id)).all())
    snapshot = create_snapshot(session, settings, actor)
    try:
        job = jobs.create_job(session, settings,
                              JobRequest(snapshot_id=snapshot.id, method=scheduled_method(settings)), actor=actor)
    except Exception:
        if snapshot.id not in known:
            remove_snapshot_files(settings, snapshot)
        raise
    state = session.get(SchedulerState, 1) or SchedulerState(id=1)
    state.last_decision = f"started {job.id} on request of {actor}"
    state.last_tick_at = utcnow()
    session.add(state)
    return job


def state_as_dict(session: Session, settings: Settings) -> dict[str, Any]:
    state = session.get(SchedulerState, 1) or SchedulerState(id=1)
    iso = lambda v: v.isoformat() if v else None  # noqa: E731
    return {"object": "scheduler", "cron": settings.retrain_cron, "min_new_examples": settings.retrain_min_new_examples,
            "method": settings.retrain_method,
            "next_run_at": iso(state.next_run_at), "last_tick_at": iso(state.last_tick_at),
            "last_decision": state.last_decision, "holder": state.holder, "lease_expires_at": iso(state.lease_expires_at)}


class RetrainScheduler:
    """The retraining and retention cron triggers plus lease renewal, inside the worker process."""

    def __init__(self, settings: Settings, db: Engine, *, holder: str):
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        self.settings, self.db, self.holder = settings, db, holder
        self.trigger = CronTrigger.from_crontab(settings.retrain_cron)
        self.retention_trigger = (CronTrigger.from_crontab(settings.retention_cron)
                                  if settings.retention_days > 0 else None)
        self._scheduler = BackgroundScheduler()
        self._pg_connection = None

    def start(self) -> None:
        self._scheduler.add_job(self._tick, self.trigger, id="retrain", max_instances=1, coalesce=True)
        if self.retention_trigger is not None:
            self._scheduler.add_job(self._purge, self.retention_trigger, id="retention", max_instances=1,
                                    coalesce=True)
        self._scheduler.add_job(self._renew, "interval", seconds=LEASE_SECONDS / 3, id="lease")
        self._scheduler.start()
        self._renew()

    def _tick(self) -> None:
        if self._holds_advisory_lock():
            tick(self.settings, self.db, self.holder)
        self._record_next_run()

    def _purge(self) -> None:
        try:
            if self._holds_advisory_lock():
                purge_tick(self.settings, self.db, self.holder)
        except Exception:  # noqa: BLE001  (logged; tomorrow's run tries again)
            log.exception("retention purge failed")

    def _renew(self) -> None:
        if self._holds_advisory_lock() and acquire_lease(self.db, self.holder):
            self._record_next_run()

    def _record_next_run(self) -> None:
        job = self._scheduler.get_job("retrain")
        if job is not None and job.next_run_time is not None:
            with session_scope(self.db) as session:
                session.exec(update(SchedulerState).where(SchedulerState.id == 1, SchedulerState.holder == self.holder)
                             .values(next_run_at=job.next_run_time))

    def _holds_advisory_lock(self) -> bool:
        """PostgreSQL only: a session-level advisory lock held on a dedicated connection; SQLite: True."""
        if self.db.dialect.name != "postgresql":
            return True
        if self._pg_connection is None:
            connection = self.db.connect()
            if not connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar():
                connection.close()
                return False
            self._pg_connection = connection
        return True

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)
        if self._pg_connection is not None:
            self._pg_connection.close()
