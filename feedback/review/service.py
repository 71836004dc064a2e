"""The review queue: assistant answers a person should look at, most urgent first.

Order: turns handed off to staff (correction memory had no approved answer it could stand behind,
and the customer was told the question was passed on: reason ``unanswered``), then answers with a
thumbs-down, then answers whose rating carries a comment (flagged), then (optionally) a sample of the
rest. The sample is chosen by message id, which is random, so the same messages stay in it from one
page to the next. A reviewer closes an item by marking it fine or by
writing a correction (which marks it corrected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, literal
from sqlmodel import Session, col, func, or_, select

from bot.memory import HANDOFF
from bot.models import Message
from feedback.corrections.models import Correction
from feedback.decisions import ReviewDecision, ReviewStatus, mark_message
from feedback.errors import FeedbackNotFoundError
from feedback.ratings.models import Rating

UNANSWERED, THUMBS_DOWN, FLAGGED, SAMPLED = "unanswered", "thumbs_down", "flagged", "sampled"


@dataclass
class ReviewItem:
    message: Message
    reason: str  # unanswered | thumbs_down | flagged | sampled
    status: ReviewStatus
    conversation: list[Message] = field(default_factory=list)  # every turn up to and including the answer
    ratings: list[Rating] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)


@dataclass
class ReviewPage:
    items: list[ReviewItem]
    has_more: bool
    next_offset: int | None


def review_queue(session: Session, *, status: ReviewStatus | None = ReviewStatus.open,
                 since: datetime | None = None, until: datetime | None = None,
                 model_version_id: str | None = None, sample_unrated: float = 0.0,
                 limit: int = 20, offset: int = 0) -> ReviewPage:
    """One page of the queue. ``status=None`` shows every status; ``sample_unrated`` (0..1) adds that
    share of the answers nobody flagged, after the flagged ones."""
    ratings = (select(Rating.message_id,
                      func.sum(case((Rating.value < 0, 1), else_=0)).label("downs"),
                      func.sum(case((Rating.comment != "", 1), else_=0)).label("comments"))
               .group_by(Rating.message_id).subquery())
    downs, comments = func.coalesce(ratings.c.downs, 0), func.coalesce(ratings.c.comments, 0)
    handed_off = Message.memory_outcome == HANDOFF
    priority = case((handed_off, 0), (downs > 0, 1), (comments > 0, 2), else_=3)
    review_status = func.coalesce(ReviewDecision.status, literal(ReviewStatus.open.value))
    query = (select(Message, priority.label("priority"), review_status.label("review_status"))
             .outerjoin(ratings, ratings.c.message_id == Message.id)
             .outerjoin(ReviewDecision, ReviewDecision.message_id == Message.id)
             .where(Message.role == "assistant"))
    flagged = or_(handed_off, downs > 0, comments > 0)
    if sample_unrated > 0:
        query = query.where(or_(flagged, Message.id < _sample_bound(sample_unrated)))
    else:
        query = query.where(flagged)
    if status is not None:
        query = query.where(review_status == ReviewStatus(status).value)
    if since is not None:
        query = query.where(Message.created_at >= since)
    if until is not None:
        query = query.where(Message.created_at < until)
    if model_version_id:
        query = query.where(Message.model_version_id == model_version_id)
    query = query.order_by(priority, col(Message.created_at).desc(), col(Message.id)).offset(offset).limit(limit + 1)
    rows = session.exec(query).all()
    reasons = {0: UNANSWERED, 1: THUMBS_DOWN, 2: FLAGGED, 3: SAMPLED}
    items = [ReviewItem(message=m, reason=reasons[int(p)], status=ReviewStatus(s)) for m, p, s in rows[:limit]]
    _attach_details(session, items)
    has_more = len(rows) > limit
    return ReviewPage(items=items, has_more=has_more, next_offset=offset + limit if has_more else None)


def review_item(session: Session, message_id: str) -> ReviewItem:
    """One assistant answer with its conversation, ratings and corrections (queued or not)."""
    message = session.get(Message, message_id)
    if message is None or message.role != "assistant":
        raise FeedbackNotFoundError(f"no assistant message {message_id!r}; pick one from GET /v1/review/queue")
    values = [r.value for r in session.exec(select(Rating).where(Rating.message_id == message_id)).all()]
    decision = session.get(ReviewDecision, message_id)
    item = ReviewItem(message=message, reason=THUMBS_DOWN if any(v < 0 for v in values) else FLAGGED,
                      status=ReviewStatus(decision.status) if decision else ReviewStatus.open)
    _attach_details(session, [item])
    if not any(r.comment for r in item.ratings) and not any(v < 0 for v in values):
        item.reason = SAMPLED
    if message.memory_outcome == HANDOFF:
        item.reason = UNANSWERED
    return item


def mark_fine(session: Session, message_id: str, *, actor: str) -> ReviewItem:
    """The answer was fine: take it out of the open queue."""
    review_item(session, message_id)  # 404 for unknown messages
    mark_message(session, message_id, ReviewStatus.fine, actor=actor)
    return review_item(session, message_id)


def _sample_bound(fraction: float) -> str:
    # Message ids are "msg_" + random hex: ids below "msg_<k>" are a stable ~k/256 share of them.
    k = min(256, max(1, round(fraction * 256)))
    return "msg_" + ("g" if k == 256 else f"{k:02x}")


def _attach_details(session: Session, items: list[ReviewItem]) -> None:
    if not items:
        return
    ids = [i.message.id for i in items]
    conversations = {i.message.conversation_id for i in items}
    turns: dict[str, list[Message]] = {}
    for m in session.exec(select(Message).where(col(Message.conversation_id).in_(conversations))
                          .order_by(col(Message.position))).all():
        turns.setdefault(m.conversation_id, []).append(m)
    ratings: dict[str, list[Rating]] = {}
    for r in session.exec(select(Rating).where(col(Rating.message_id).in_(ids)).order_by(col(Rating.created_at))).all():
        ratings.setdefault(r.message_id, []).append(r)
    corrections: dict[str, list[Correction]] = {}
    for c in session.exec(select(Correction).where(col(Correction.message_id).in_(ids))
                          .order_by(col(Correction.lineage_id), col(Correction.revision))).all():
        corrections.setdefault(c.message_id, []).append(c)
    for item in items:
        m = item.message
        item.conversation = [t for t in turns.get(m.conversation_id, []) if t.position <= m.position]
        item.ratings = ratings.get(m.id, [])
        item.corrections = corrections.get(m.id, [])


def item_as_dict(item: ReviewItem) -> dict[str, Any]:
    """JSON shape shared by the API and the UI."""
    return {
        "message_id": item.message.id, "conversation_id": item.message.conversation_id,
        "reason": item.reason, "review_status": item.status.value,
        "model_version_id": item.message.model_version_id, "created_at": item.message.created_at.isoformat(),
        "answer": item.message.content,
        # verified: the answer was an approved correction's own text, so a thumbs-down means that correction
        # needs editing; grounded: these corrections were in the prompt
        "memory_outcome": item.message.memory_outcome, "memory_correction_ids": list(item.message.memory_correction_ids),
        "conversation": [{"id": t.id, "role": t.role, "content": t.content} for t in item.conversation],
        "ratings": [{"id": r.id, "value": r.value, "comment": r.comment, "rater": r.rater} for r in item.ratings],
        "corrections": [c.model_dump(mode="json", warnings=False) for c in item.corrections],
    }
