"""POST /v1/messages/{message_id}/rating: thumbs up or down on an answer (thin: see feedback.ratings)."""

from __future__ import annotations

from fastapi import APIRouter

from bot.protocol import RatingObject, RatingRequest, unix
from feedback import ratings
from tuneloop.core.deps import SessionDep
from tuneloop.core.errors import ApiError

router = APIRouter(tags=["feedback"])


@router.post("/v1/messages/{message_id}/rating", response_model=RatingObject)
def rate(message_id: str, body: RatingRequest, session: SessionDep) -> RatingObject:
    try:
        rating = ratings.rate_message(session, message_id=message_id, value=body.value, comment=body.comment,
                                      rater=body.rater)
        session.commit()
    except ratings.UnknownMessageError as exc:
        raise ApiError(404, str(exc), type="not_found_error", param="message_id") from exc
    except ratings.NotRateableError as exc:
        raise ApiError(400, str(exc), param="message_id") from exc
    return RatingObject(id=rating.id, message_id=rating.message_id, value=rating.value, comment=rating.comment,
                        rater=rating.rater, model_version_id=rating.model_version_id, created_at=unix(rating.created_at))
