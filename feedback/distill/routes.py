"""Distillation over HTTP, for admins (thin: see feedback.distill.plan and feedback.distill.service).

``POST /v1/distill/estimate`` answers what a run would cost without calling the teacher;
``POST /v1/distill/runs`` starts one (202) that runs in the background; poll
``GET /v1/distill/runs/{id}``; ``POST /v1/distill/runs/{id}/resume`` continues a stopped one.
Documents are distilled with the CLI (`tuneloop distill docs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session

from feedback.distill import service as distill, plan as distill_plan
from feedback.distill.teacher import TeacherError
from feedback.errors import FeedbackConflictError
from tuneloop.core.deps import AdminAccount, SessionDep, SettingsDep
from tuneloop.core.errors import ApiError
from tuneloop.core.inputs import MAX_DB_INT
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["distillation"])


class DistillRequest(BaseModel):
    kind: Literal["task", "paraphrase"] = Field("task", description="task: from a description; paraphrase: "
                                                "other wordings of approved corrections")
    description: str = Field("", description="task: one paragraph about the business")
    count: int = Field(20, ge=1, le=distill_plan.MAX_COUNT, description="task: question/answer pairs wanted")
    per_correction: int | None = Field(None, ge=1, le=distill_plan.PAIRS_PER_REQUEST,
                                       description="paraphrase: default TUNELOOP_DISTILL_PARAPHRASES_PER_CORRECTION")
    temperature: float = Field(0.9, ge=0.0, le=2.0)
    budget: int | None = Field(None, ge=0, le=MAX_DB_INT,
                               description="tokens; default TUNELOOP_DISTILL_MAX_TOKENS_BUDGET, 0 = no limit")


class Resume(BaseModel):
    budget: int | None = Field(None, ge=0, le=MAX_DB_INT, description="a new token budget, e.g. to continue a run stopped by it")


@contextmanager
def distill_errors() -> Iterator[None]:
    """Service errors as usual; a teacher that cannot be used is the upstream's fault: 502."""
    try:
        yield
    except TeacherError as exc:
        raise ApiError(502, str(exc), type="teacher_error") from exc


def _plan(session: Session, settings: Settings, body: DistillRequest) -> distill_plan.DistillPlan:
    if body.kind == "paraphrase":
        return distill_plan.plan_paraphrases(session, settings, per_correction=body.per_correction,
                                        temperature=body.temperature, budget=body.budget)
    return distill_plan.plan_task(settings, description=body.description, count=body.count,
                             temperature=body.temperature, budget=body.budget)


def _run_in_background(request: Request, run_id: str, budget: int | None = None) -> None:
    db, settings = request.app.state.db, request.app.state.settings
    try:
        distill.execute_run(db, settings, run_id, budget=budget)
    except Exception:  # the run records why it stopped; the caller polls it
        log.warning("distillation run %s stopped", run_id, exc_info=True)


@router.post("/v1/distill/estimate")
def estimate(body: DistillRequest, _admin: AdminAccount, session: SessionDep, settings: SettingsDep) -> dict:
    with distill_errors():
        return _plan(session, settings, body).as_dict()


@router.post("/v1/distill/runs", status_code=202)
def start(body: DistillRequest, admin: AdminAccount, session: SessionDep, settings: SettingsDep,
          request: Request, background: BackgroundTasks) -> dict:
    """Start a run: the estimate was shown and confirmed by the caller. Poll the run for progress."""
    with distill_errors():
        plan = _plan(session, settings, body)
        run = distill.create_run(session, plan, actor=admin.username)
        session.commit()
    background.add_task(_run_in_background, request, run.id)
    return {**distill.run_as_dict(run), "estimate": plan.as_dict()}


@router.get("/v1/distill/runs")
def list_(_admin: AdminAccount, session: SessionDep, limit: int = Query(50, ge=1, le=200)) -> dict:
    return {"object": "list", "data": [distill.run_as_dict(r) for r in distill.list_runs(session, limit=limit)]}


@router.get("/v1/distill/runs/{run_id}")
def get(run_id: str, _admin: AdminAccount, session: SessionDep) -> dict:
    with distill_errors():
        return distill.run_as_dict(distill.get_run(session, run_id))


@router.post("/v1/distill/runs/{run_id}/resume", status_code=202)
def resume(run_id: str, _admin: AdminAccount, session: SessionDep, request: Request, background: BackgroundTasks,
           body: Resume | None = None) -> dict:
    with distill_errors():
        run = distill.get_run(session, run_id)
        if run.status == "completed":
            raise FeedbackConflictError(f"distillation run {run.id} is already completed; start a new run")
    background.add_task(_run_in_background, request, run.id, body.budget if body else None)
    return distill.run_as_dict(run)
