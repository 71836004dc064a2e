"""POST /v1/messages/{message_id}/rating: thumbs up or down on an answer (thin: see feedback.ratings)."""

from __future__ import annotations

from fastapi import APIRouter

from bot.protocol import unix
from bot.resources import RatingObject, RatingRequest
from feedback.ratings import service as ratings
from tuneloop.core.deps import SessionDep

router = APIRouter(tags=["feedback"])


@router.post("/v1/messages/{message_id}/rating", response_model=RatingObject)
def rate(message_id: str, body: RatingRequest, session: SessionDep) -> RatingObject:
    rating = ratings.rate_message(session, message_id=message_id, value=body.value, comment=body.comment,
                                  rater=body.rater)  # its errors name message_id (404 or 400)
    session.commit()
    return RatingObject(id=rating.id, message_id=rating.message_id, value=rating.value, comment=rating.comment,
                        rater=rating.rater, model_version_id=rating.model_version_id, created_at=unix(rating.created_at))
