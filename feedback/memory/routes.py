"""Correction memory over HTTP: calibration of verified replies and how one question would be handled."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from feedback.memory.calibration import calibrate
from tuneloop.core.deps import AdminAccount, SessionDep, SettingsDep, StaffAccount
from tuneloop.core.errors import ApiError

router = APIRouter(tags=["memory"])


class MemoryProbe(BaseModel):
    messages: list[dict[str, str]] = Field(min_length=1, description="chat turns, the last one from the user")


@router.get("/v1/memory/calibration")
def calibration(request: Request, _admin: AdminAccount, session: SessionDep, settings: SettingsDep,
                target_precision: float = Query(0.99, gt=0.0, le=1.0,
                                                description="share of verified replies that must be right"),
                save: bool = Query(False, description="store the fitted selector for the version in production")) -> dict:
    """Answer selection fitted on this deployment's data: precision and recall of verified replies across
    probability thresholds (the served weights scoring the candidates), optionally stored for production."""
    runtime = request.app.state.runtime
    if runtime.memory is None:
        raise ApiError(409, "correction memory is off; set TUNELOOP_MEMORY_ENABLED=true", type="conflict_error")
    report = calibrate(session, settings, runtime.memory, scorer=runtime.answer_scorer(),
                       target_precision=target_precision, save=save)
    return {"object": "memory.calibration", **report.as_dict()}


@router.post("/v1/memory/decide")
def decide(body: MemoryProbe, request: Request, _staff: StaffAccount) -> dict:
    """What correction memory would do with these messages (nothing is generated or logged)."""
    memory = request.app.state.runtime.memory
    if memory is None:
        raise ApiError(409, "correction memory is off; set TUNELOOP_MEMORY_ENABLED=true", type="conflict_error")
    if body.messages[-1].get("role") != "user":
        raise ApiError(400, "messages: the last message must come from the user", param="messages")
    decision = memory.decide(body.messages, request.app.state.runtime.answer_scorer())
    return {"object": "memory.decision", "outcome": decision.outcome, "correction_ids": decision.correction_ids,
            "scores": decision.logged_scores(), "reason": decision.reason}
