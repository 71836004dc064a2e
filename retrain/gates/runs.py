"""Gate runs: the API queues one, the worker runs it (``retrain.gates.execution``), anyone can follow it.

Gating loads two models and asks them a few hundred questions: minutes on a CPU. That belongs on the
worker, not inside an HTTP request, so ``POST /v1/registry/versions/{id}/gates`` only queues a
``GateRun`` (202) and the worker picks queued runs between training jobs, oldest first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from registry import lifecycle as registry
from registry.models import VersionStatus
from retrain.models import GateRun, GateRunStatus
from tuneloop.core.accounts.service import audit
from tuneloop.core.db import session_scope
from tuneloop.core.errors import ConflictError, InvalidInputError, NotFoundError
from tuneloop.core.ids import utcnow

OPEN = (GateRunStatus.queued, GateRunStatus.running)


class GateRunNotFoundError(NotFoundError):
    param, code = "gate_run_id", "not_found"


def queue_gate_run(session: Session, version_id: str, actor: str) -> GateRun:
    """Queue the gates for ``version_id``; an open run for the same version is returned, not doubled."""
    version = registry.get_version(session, version_id)
    if version.status == VersionStatus.deleted:
        raise ConflictError(f"{version_id} is deleted; there is nothing to gate.", code="invalid_state")
    if version.hosted_model:
        raise InvalidInputError(f"{version_id} is served by a hosted API; the gates run local models only.")
    open_run = open_run_for(session, version_id)
    if open_run is not None:
        return open_run
    run = GateRun(version_id=version_id, requested_by=actor)
    session.add(run)
    session.flush()
    audit(session, actor=actor, action="version.gates_queued", object_type="modelversion", object_id=version_id,
          gate_run_id=run.id)
    return run


def open_run_for(session: Session, version_id: str) -> GateRun | None:
    """The queued or running gate run of ``version_id``, if there is one."""
    return session.exec(select(GateRun).where(GateRun.version_id == version_id, col(GateRun.status).in_(OPEN))
                        .order_by(col(GateRun.created_at).desc())).first()


def get_gate_run(session: Session, run_id: str) -> GateRun:
    run = session.get(GateRun, run_id)
    if run is None:
        raise GateRunNotFoundError(f"No gate run {run_id!r}; queue one with POST /v1/registry/versions/<id>/gates.")
    return run


def claim_next(db: Engine, worker_id: str) -> str | None:
    """Mark the oldest queued run running (compare-and-swap: two workers never take the same one)."""
    with session_scope(db) as session:
        run = session.exec(select(GateRun).where(GateRun.status == GateRunStatus.queued)
                           .order_by(col(GateRun.created_at))).first()
        if run is None:
            return None
        claimed = session.exec(update(GateRun).where(GateRun.id == run.id, GateRun.status == GateRunStatus.queued)
                               .values(status=GateRunStatus.running, started_at=utcnow(), worker_id=worker_id,
                                       stage="loading the candidate and production models"))
        return run.id if claimed.rowcount == 1 else None


def gate_run_as_dict(run: GateRun) -> dict[str, Any]:
    return {"id": run.id, "object": "gate_run", "version_id": run.version_id, "status": run.status,
            "stage": run.stage, "report_id": run.report_id, "error": run.error, "requested_by": run.requested_by,
            "created_at": _ts(run.created_at), "started_at": _ts(run.started_at), "finished_at": _ts(run.finished_at)}


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None
