"""Running a claimed gate run on the worker: the gates themselves (``retrain.gates.service``), with
their progress and outcome recorded on the run. Kept apart from ``retrain.gates.runs`` (queueing and
reading runs, which the API does) because running gates loads models: torch, which an API process
serving through llama.cpp never imports."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from retrain.gates.runs import get_gate_run
from retrain.gates.service import run_gates
from retrain.models import GateRun, GateRunStatus
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


def execute_gate_run(settings: Settings, db: Engine, run_id: str) -> GateRun:
    """Run the gates of a claimed run to the end and record the outcome on it (never raises for a
    failure of the gates themselves: that is the run's ``error``)."""
    with Session(db) as session:
        version_id = get_gate_run(session, run_id).version_id
    try:
        report = run_gates(settings, db, version_id, progress=lambda stage: _set_stage(db, run_id, stage))
        values: dict[str, Any] = {"status": GateRunStatus.succeeded, "report_id": report.id,
                                  "stage": "passed" if report.passed else "failed: " + "; ".join(
                                      report.summary.get("reasons", []))[:500]}
    except Exception as exc:  # noqa: BLE001  (recorded on the run; the worker goes on)
        log.exception("gates failed for %s", version_id)
        values = {"status": GateRunStatus.failed, "error": str(exc), "stage": "could not run"}
    with session_scope(db) as session:
        run = session.get(GateRun, run_id)
        for key, value in {**values, "finished_at": utcnow()}.items():
            setattr(run, key, value)
        session.add(run)
    return run


def _set_stage(db: Engine, run_id: str, stage: str) -> None:
    with session_scope(db) as session:
        session.exec(update(GateRun).where(GateRun.id == run_id).values(stage=stage))
