"""The review queue over HTTP (thin: see feedback.review). Staff only: it shows conversations."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from feedback.corrections.routes import correction_as_dict
from feedback.review import service as review
from feedback.decisions import ReviewStatus
from tuneloop.core.deps import SessionDep, SettingsDep, StaffAccount
from tuneloop.core.inputs import AfterCursor, Timestamp

router = APIRouter(tags=["review"])


@router.get("/v1/review/queue")
def queue(_staff: StaffAccount, session: SessionDep,
          status: Literal["open", "fine", "corrected", "all"] = "open",
          since: Timestamp | None = None, until: Timestamp | None = None, model_version_id: str | None = None,
          sample_unrated: float = Query(0.0, ge=0.0, le=1.0, description="share of unflagged answers to add"),
          limit: int = Query(20, ge=1, le=100), offset: AfterCursor = 0) -> dict:
    page = review.review_queue(session, status=None if status == "all" else ReviewStatus(status), since=since, until=until,
                               model_version_id=model_version_id, sample_unrated=sample_unrated,
                               limit=limit, offset=offset)
    return {"object": "list", "data": [review.item_as_dict(i) for i in page.items],
            "has_more": page.has_more, "next_after": page.next_offset}


@router.get("/v1/review/items/{message_id}")
def item(message_id: str, _staff: StaffAccount, session: SessionDep, settings: SettingsDep) -> dict:
    found = review.review_item(session, message_id)
    body = review.item_as_dict(found)
    body["corrections"] = [correction_as_dict(session, settings, c) for c in found.corrections]
    return body


@router.post("/v1/review/items/{message_id}/fine")
def mark_fine(message_id: str, staff: StaffAccount, session: SessionDep) -> dict:
    found = review.mark_fine(session, message_id, actor=staff.username)
    session.commit()
    return review.item_as_dict(found)
