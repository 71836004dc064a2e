"""Ratings: a thumbs-up or thumbs-down on an assistant answer, by the end user who saw it.

One rating per (message, rater): rating again replaces the earlier value and comment. The rating
remembers which model version gave the answer, so feedback can be compared across versions. The chat
API, the web chat and the terminal chat all call ``rate_message``.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from bot.models import Message
from feedback.ratings.models import Rating
from tuneloop.core import errors
from tuneloop.core.ids import utcnow

_VALUES = {"up": 1, "down": -1, 1: 1, -1: -1, "+1": 1, "-1": -1}


class UnknownMessageError(errors.NotFoundError):
    param = "message_id"


class NotRateableError(errors.InvalidInputError):
    """Only assistant answers can be rated."""

    param = "message_id"


def rating_value(value: str | int) -> int:
    """"up"/"down" or +1/-1 as the stored +1/-1."""
    if isinstance(value, bool) or value not in _VALUES:
        raise errors.InvalidInputError(f"A rating is 'up' or 'down' (or +1 / -1), not {value!r}.", param="rating")
    return _VALUES[value]


def rate_message(session: Session, *, message_id: str, value: str | int, comment: str = "",
                 rater: str | None = None) -> Rating:
    """Store (or update) ``rater``'s rating of an assistant message, in the caller's transaction."""
    score = rating_value(value)
    message = session.get(Message, message_id)
    if message is None:
        raise UnknownMessageError(f"No message {message_id!r}; use the message_id returned with the answer.")
    if message.role != "assistant":
        raise NotRateableError(f"Message {message_id!r} is a {message.role} message; only assistant answers "
                               "can be rated.")
    rater = rater or "anonymous"
    rating = _existing(session, message_id, rater)
    if rating is None:
        rating = Rating(message_id=message_id, value=score, comment=comment, rater=rater,
                        model_version_id=message.model_version_id)
        try:
            with session.begin_nested():  # two clicks at once: the second one updates the first
                session.add(rating)
            return rating
        except IntegrityError:
            rating = _existing(session, message_id, rater)
    rating.value, rating.comment, rating.created_at = score, comment, utcnow()
    session.add(rating)
    session.flush()
    return rating


def ratings_of(session: Session, message_id: str) -> list[Rating]:
    return list(session.exec(select(Rating).where(Rating.message_id == message_id)))


def _existing(session: Session, message_id: str, rater: str) -> Rating | None:
    return session.exec(select(Rating).where(Rating.message_id == message_id, Rating.rater == rater)).first()
