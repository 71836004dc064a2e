"""The scheduler over HTTP (thin: see retrain.scheduler). Apart from the fine-tuning routes because the
scheduler queues jobs: it builds on retrain.jobs."""

from __future__ import annotations

from fastapi import APIRouter

from retrain.jobs.openai_routes import job_response
from retrain.scheduler import state_as_dict, train_now as start
from tuneloop.core.deps import AdminAccount, SessionDep, SettingsDep, StaffAccount

router = APIRouter(tags=["fine-tuning"])


@router.get("/v1/scheduler", tags=["scheduler"])
def scheduler_state(session: SessionDep, settings: SettingsDep, _account: StaffAccount):
    return state_as_dict(session, settings)


@router.post("/v1/scheduler/train-now", tags=["scheduler"])
def train_now(session: SessionDep, settings: SettingsDep, account: AdminAccount):
    job = start(session, settings, actor=account.username)
    session.commit()
    return job_response(session, job)
