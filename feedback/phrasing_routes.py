"""Suggested phrasings over HTTP (thin: see feedback.phrasings). Beside the corrections' routes rather
than among them: the suggestions need memory's index and the distillation teacher, which are built on
corrections."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from feedback.corrections import service
from feedback.phrasings import suggest_phrasings
from tuneloop.core.deps import SessionDep, SettingsDep, StaffAccount

router = APIRouter(tags=["corrections"])


@router.get("/v1/corrections/{correction_id}/phrasing-suggestions")
def phrasing_suggestions(correction_id: str, request: Request, _staff: StaffAccount, session: SessionDep,
                         settings: SettingsDep, sources: str = Query("logs,model,teacher",
                                                                     description="comma-separated: logs, model, teacher"),
                         limit: int = Query(10, ge=1, le=50)) -> dict:
    """Other ways customers ask this correction's question, each routed to it by correction memory and
    changing no other correction's answer; accept them by PATCHing ``alternative_questions``.
    ``withheld`` lists those that would (each with ``asks_about`` and ``reason``)."""
    correction = service.get_correction(session, correction_id)
    withheld = []
    found, skipped = suggest_phrasings(session, settings, correction, runtime=request.app.state.runtime,
                                       sources=tuple(s.strip() for s in sources.split(",") if s.strip()),
                                       limit=limit, withheld=withheld)
    return {"object": "list", "correction_id": correction.id, "data": [s.as_dict() for s in found],
            "withheld": [s.as_dict() for s in withheld], "skipped": skipped}
