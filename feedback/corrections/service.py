"""Expert corrections: the answer the bot should have given, with two-person approval.

Lifecycle of one *lineage* (all revisions share ``lineage_id``)::

    draft --submit--> submitted --approve--> approved --(newer revision approved)--> superseded
                                 --reject---> rejected

Its author editing a draft or submitted correction changes it in place. Anyone else's edit creates the
next revision, authored by the editor (who then cannot approve it), and supersedes the open one; editing
an approved correction also creates the next revision (status draft), and the approved revision stays in
the training data until its successor is approved. Approval and rejection need a second person unless
``settings.allow_self_approval``, and an approval names the exact text approved (``correction_etag``):
text changed since the reviewer read it is a conflict, not an approval of unseen words. Every state
change writes an audit event in the same transaction; approvals record author, editor and approver.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, func, select

from bot.clarify import answers_an_offer, offered_questions
from bot.memory import CLARIFY
from bot.models import Message
from feedback.corrections.contacts import clean_fields, require_decided
from feedback.corrections.models import Correction, CorrectionSource, CorrectionStatus
from feedback.decisions import ReviewStatus, mark_message
from feedback.errors import FeedbackConflictError, FeedbackError, FeedbackForbiddenError, FeedbackNotFoundError
from tuneloop.core.accounts.service import audit
from tuneloop.core.ids import new_id, utcnow
from tuneloop.core.settings import Settings

OPEN_STATUSES = (CorrectionStatus.draft, CorrectionStatus.submitted)


def bare_etag(value: str) -> str:
    """An etag as sent (``W/"abc"``, ``"abc"`` or ``abc``) reduced to the value ``correction_etag`` returns."""
    return value.strip().removeprefix("W/").strip('"')


def correction_etag(correction: Correction) -> str:
    """Names one revision's exact text: any edit changes it, so an approval that names it approves the
    words the reviewer read (HTTP: the ``ETag`` of GET, sent back as ``If-Match``)."""
    content = [correction.id, correction.revision, correction.question, correction.answer, correction.key_facts,
               correction.alternative_questions]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:24]


def get_correction(session: Session, correction_id: str) -> Correction:
    correction = session.get(Correction, correction_id)
    if correction is None:
        raise FeedbackNotFoundError(f"no correction {correction_id!r}; list them with GET /v1/corrections")
    return correction


def list_corrections(session: Session, *, status: CorrectionStatus | None = None, lineage_id: str | None = None,
                     message_id: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Correction], bool]:
    """Newest first. Returns one page and whether more follow."""
    query = select(Correction)
    if status:
        query = query.where(Correction.status == status)
    if lineage_id:
        query = query.where(Correction.lineage_id == lineage_id)
    if message_id:
        query = query.where(Correction.message_id == message_id)
    query = query.order_by(col(Correction.created_at).desc(), col(Correction.id)).offset(offset).limit(limit + 1)
    rows = list(session.exec(query).all())
    return rows[:limit], len(rows) > limit


def approved_corrections(session: Session) -> list[Correction]:
    """The current approved revision of every lineage: what goes into training data."""
    query = select(Correction).where(Correction.status == CorrectionStatus.approved)
    return list(session.exec(query.order_by(col(Correction.lineage_id), col(Correction.revision))).all())


def question_before(session: Session, settings: Settings, message: Message) -> str:
    """The user's question that the assistant ``message`` answered: the user's message before it, or,
    when that message only answered a clarifying question ("yes", "no", "2"; ``bot.clarify``),
    the question before that."""
    query = (select(Message).where(Message.conversation_id == message.conversation_id,
                                   Message.position < message.position)
             .order_by(col(Message.position).desc()))
    earlier = list(session.exec(query).all())
    users = [i for i, m in enumerate(earlier) if m.role == "user"]
    for n, i in enumerate(users):
        asked_back = i + 1 < len(earlier) and earlier[i + 1].role == "assistant" and (
            earlier[i + 1].memory_outcome == CLARIFY or offered_questions(settings, earlier[i + 1].content or ""))
        if not (asked_back and answers_an_offer(earlier[i].content)) or n + 1 == len(users):
            return earlier[i].content
    return ""


def _clean(settings: Settings, question: str, answer: str, key_facts: Sequence[str],
           alternatives: Sequence[str] = (), *, decide_later: bool = True) -> tuple[dict, list]:
    question, answer = question.strip(), answer.strip()
    facts = [f.strip() for f in key_facts if f and f.strip()]
    alternatives = clean_alternatives(question, alternatives)
    if not answer:
        raise FeedbackError("answer must not be empty: write the answer the bot should have given")
    if not question:
        raise FeedbackError("question must not be empty: give the customer's question")
    fields = {"question": question, "answer": answer}
    fields.update({f"key_facts.{i}": fact for i, fact in enumerate(facts)})
    fields.update({f"alternative_questions.{i}": text for i, text in enumerate(alternatives)})
    masked: list[dict[str, Any]] = []
    if settings.scrub_pii:
        fields, masked = clean_fields(settings, fields, decide_later=decide_later)  # see feedback.corrections.contacts
    return {"question": fields["question"], "answer": fields["answer"],
            "key_facts": [fields[f"key_facts.{i}"] for i in range(len(facts))],
            "alternative_questions": [fields[f"alternative_questions.{i}"] for i in range(len(alternatives))]}, masked


def normalized_question(text: str) -> str:
    """How two wordings are compared for "the same": case, spacing and trailing punctuation ignored."""
    return " ".join(text.lower().split()).rstrip("?.! ")


def clean_alternatives(question: str, alternatives: Sequence[str]) -> list[str]:
    """Stripped alternative questions; empty ones, repeats and copies of the question are refused."""
    cleaned, seen = [], {normalized_question(question): "the question itself"}
    for i, text in enumerate(alternatives):
        if not isinstance(text, str) or not text.strip():
            raise FeedbackError(f"alternative_questions[{i}] is empty: write the other wording or remove the entry")
        key = normalized_question(text)
        if key in seen:
            raise FeedbackError(f"alternative_questions[{i}] ({text.strip()!r}) repeats {seen[key]}: "
                                "remove it or write a different wording")
        seen[key] = f"alternative_questions[{i}]"
        cleaned.append(text.strip())
    return cleaned


def check_alternatives_unique(session: Session, correction: Correction) -> None:
    """Refuse alternative questions identical to another approved correction's question or phrasing:
    memory could not tell the two corrections apart."""
    if not correction.alternative_questions:
        return
    mine = {normalized_question(t): t for t in correction.alternative_questions}
    others = session.exec(select(Correction).where(Correction.status == CorrectionStatus.approved,
                                                   Correction.lineage_id != correction.lineage_id)).all()
    for other in others:
        for text in (other.question, *(other.alternative_questions or ())):
            if normalized_question(text) in mine:
                raise FeedbackError(
                    f"alternative question {mine[normalized_question(text)]!r} is already how approved correction {other.id} "
                    f"is asked ({text!r}); remove it here, or edit {other.id} if that one is wrong")


def create_correction(session: Session, settings: Settings, *, actor: str, answer: str,
                      message_id: str | None = None, question: str | None = None,
                      key_facts: Sequence[str] = (), source: CorrectionSource | None = None,
                      status: CorrectionStatus = CorrectionStatus.draft, origin: dict | None = None,
                      alternative_questions: Sequence[str] = ()) -> Correction:
    """A correction for an assistant message (the question defaults to the user's message before it)
    or, without ``message_id``, a standalone knowledge question/answer pair."""
    conversation_id = None
    if message_id:
        message = session.get(Message, message_id)
        if message is None or message.role != "assistant":
            raise FeedbackNotFoundError(f"no assistant message {message_id!r}; pick one from GET /v1/review/queue")
        conversation_id = message.conversation_id
        question = question if question and question.strip() else question_before(session, settings, message)
        source = source or CorrectionSource.conversation
        mark_message(session, message_id, ReviewStatus.corrected, actor=actor)
    else:
        source = source or CorrectionSource.knowledge
    if status not in (CorrectionStatus.draft, CorrectionStatus.submitted, CorrectionStatus.approved):
        raise FeedbackError("a new correction starts as draft or submitted")
    fields, masked = _clean(settings, question or "", answer, key_facts, alternative_questions,
                            decide_later=status != CorrectionStatus.approved)  # no one to decide: mask
    correction_id = new_id("corr")
    correction = Correction(id=correction_id, lineage_id=correction_id, source=CorrectionSource(source),
                            message_id=message_id, conversation_id=conversation_id, status=status, author=actor,
                            pii_masked=masked, origin=origin or {}, **fields)
    if status == CorrectionStatus.approved:  # imports by an admin: approved on arrival
        correction.reviewer, correction.decided_at = actor, utcnow()
    check_alternatives_unique(session, correction)
    session.add(correction)
    audit(session, actor=actor, action="correction.created", object_type="correction", object_id=correction.id,
          status=str(status), source=str(source), message_id=message_id)
    session.flush()
    return correction


def update_correction(session: Session, settings: Settings, correction_id: str, *, actor: str,
                      question: str | None = None, answer: str | None = None,
                      key_facts: Sequence[str] | None = None,
                      alternative_questions: Sequence[str] | None = None) -> Correction:
    """The author edits a draft/submitted correction in place; anyone else's edit, and any edit of an
    approved correction, makes the next revision, authored by the editor."""
    current = get_correction(session, correction_id)
    fields, masked = _clean(settings, current.question if question is None else question,
                            current.answer if answer is None else answer,
                            current.key_facts if key_facts is None else key_facts,
                            current.alternative_questions if alternative_questions is None else alternative_questions)
    check_alternatives_unique(session, Correction(lineage_id=current.lineage_id, question=fields["question"],
                                                  answer=fields["answer"], author=actor,
                                                  alternative_questions=fields["alternative_questions"]))
    if current.status in OPEN_STATUSES and current.author == actor:
        before = correction_etag(current)
        for name, value in fields.items():
            setattr(current, name, value)
        current.pii_masked, current.updated_at = masked, utcnow()
        session.add(current)
        audit(session, actor=actor, action="correction.edited", object_type="correction", object_id=current.id,
              revision=current.revision, etag_before=before, etag=correction_etag(current))
        return current
    if current.status in OPEN_STATUSES:  # a colleague's text: theirs stays theirs, the edit is the editor's
        status = current.status
        current.status, current.updated_at = CorrectionStatus.superseded, utcnow()
        session.add(current)
        audit(session, actor=actor, action="correction.superseded", object_type="correction", object_id=current.id,
              reason=f"edited by {actor}, who is not its author")
        session.flush()
        return _next_revision(session, current, actor, fields, masked, status=CorrectionStatus(status))
    if current.status != CorrectionStatus.approved:
        raise FeedbackConflictError(f"correction {current.id} is {current.status}; only draft, submitted or approved "
                            "corrections can be edited (write a new one instead)")
    pending = _pending_revision(session, current.lineage_id)
    if pending is not None:
        raise FeedbackConflictError(f"revision {pending.revision} ({pending.id}) of this correction is already {pending.status}; "
                            "edit that one")
    return _next_revision(session, current, actor, fields, masked, status=CorrectionStatus.draft)


def _next_revision(session: Session, current: Correction, actor: str, fields: dict, masked: list, *,
                   status: CorrectionStatus) -> Correction:
    latest = session.exec(select(func.max(Correction.revision)).where(Correction.lineage_id == current.lineage_id)).one()
    revision = Correction(lineage_id=current.lineage_id, revision=(latest or current.revision) + 1,
                          source=current.source, message_id=current.message_id,
                          conversation_id=current.conversation_id, author=actor, status=status, pii_masked=masked,
                          origin={**current.origin, "previous_revision_id": current.id}, **fields)
    session.add(revision)
    audit(session, actor=actor, action="correction.revised", object_type="correction", object_id=revision.id,
          lineage_id=current.lineage_id, revision=revision.revision, previous=current.id,
          previous_author=current.author, author=actor, status=str(status), etag=correction_etag(revision))
    session.flush()
    return revision


def submit_correction(session: Session, correction_id: str, *, actor: str) -> Correction:
    correction = get_correction(session, correction_id)
    if correction.status != CorrectionStatus.draft:
        raise FeedbackConflictError(f"correction {correction.id} is already {correction.status}; only a draft can be submitted")
    correction.status, correction.updated_at = CorrectionStatus.submitted, utcnow()
    session.add(correction)
    audit(session, actor=actor, action="correction.submitted", object_type="correction", object_id=correction.id)
    return correction


def approve_correction(session: Session, settings: Settings, correction_id: str, *, actor: str,
                       etag: str | None = None) -> Correction:
    """Approve a submitted correction; the lineage's previously approved revision becomes superseded.
    ``etag`` (from ``correction_etag`` of what the reviewer read) must still match: the HTTP route and
    the review page always pass it; in-process callers that just read the row may omit it."""
    correction = _decidable(session, settings, correction_id, actor)
    require_decided(correction)
    current_etag = correction_etag(correction)
    if etag is not None and bare_etag(etag) != current_etag:
        raise FeedbackConflictError(f"correction {correction.id} changed since you read it (its etag is now {current_etag}); "
                            "read the current text (GET it again) and approve that")
    check_alternatives_unique(session, correction)  # another correction may have been approved meanwhile
    for previous in session.exec(select(Correction).where(Correction.lineage_id == correction.lineage_id,
                                                          Correction.status == CorrectionStatus.approved)).all():
        previous.status, previous.updated_at = CorrectionStatus.superseded, utcnow()
        session.add(previous)
        audit(session, actor=actor, action="correction.superseded", object_type="correction", object_id=previous.id,
              by=correction.id)
    correction.status, correction.reviewer = CorrectionStatus.approved, actor
    correction.decided_at = correction.updated_at = utcnow()
    session.add(correction)
    first_author = session.exec(select(Correction.author).where(Correction.lineage_id == correction.lineage_id)
                                .order_by(col(Correction.revision))).first()
    audit(session, actor=actor, action="correction.approved", object_type="correction", object_id=correction.id,
          lineage_id=correction.lineage_id, revision=correction.revision, etag=current_etag,
          author=first_author or correction.author, editor=correction.author, approver=actor)
    return correction


def reject_correction(session: Session, settings: Settings, correction_id: str, *, actor: str, reason: str) -> Correction:
    if not reason or not reason.strip():
        raise FeedbackError("reason must not be empty: tell the author what to change")
    correction = _decidable(session, settings, correction_id, actor)
    correction.status, correction.reviewer, correction.review_reason = CorrectionStatus.rejected, actor, reason.strip()
    correction.decided_at = correction.updated_at = utcnow()
    session.add(correction)
    audit(session, actor=actor, action="correction.rejected", object_type="correction", object_id=correction.id,
          reason=correction.review_reason)
    return correction


def _decidable(session: Session, settings: Settings, correction_id: str, actor: str) -> Correction:
    correction = get_correction(session, correction_id)
    if correction.status != CorrectionStatus.submitted:
        hint = "submit it first" if correction.status == CorrectionStatus.draft else "it was already decided"
        raise FeedbackConflictError(f"correction {correction.id} is {correction.status}, not submitted; {hint}")
    if correction.author == actor and not settings.allow_self_approval:
        raise FeedbackForbiddenError("you wrote this correction; another staff member must approve or reject it "
                             "(one-person teams: set TUNELOOP_ALLOW_SELF_APPROVAL=true)")
    return correction


def _pending_revision(session: Session, lineage_id: str) -> Correction | None:
    return session.exec(select(Correction).where(Correction.lineage_id == lineage_id,
                                                 col(Correction.status).in_(OPEN_STATUSES))).first()

