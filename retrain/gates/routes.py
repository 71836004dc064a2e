"""Running the gates over HTTP (thin: see retrain.gates.runs). Staff queue a run, the worker does it."""

from __future__ import annotations

from fastapi import APIRouter

from retrain.gates import runs as gate_runs
from tuneloop.core.deps import SessionDep, StaffAccount

router = APIRouter(tags=["registry"])


@router.post("/v1/registry/versions/{version_id}/gates", status_code=202)
def queue_gates(version_id: str, staff: StaffAccount, session: SessionDep) -> dict:
    """Queue the gates for a candidate (``tuneloop worker`` runs them: minutes on a CPU). Follow the
    returned run with GET /v1/registry/gate-runs/{id}; the report lands on the version."""
    run = gate_runs.queue_gate_run(session, version_id, actor=staff.username)
    session.commit()
    return gate_runs.gate_run_as_dict(run)


@router.get("/v1/registry/gate-runs/{run_id}")
def get_gate_run(run_id: str, _staff: StaffAccount, session: SessionDep) -> dict:
    return gate_runs.gate_run_as_dict(gate_runs.get_gate_run(session, run_id))
