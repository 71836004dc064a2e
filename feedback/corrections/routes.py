"""Corrections, their approval and the audit log over HTTP (thin: see feedback.corrections)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from feedback.corrections import contacts, service
from feedback.corrections.models import Correction, CorrectionSource, CorrectionStatus
from feedback.corrections.similarity import find_similar
from tuneloop.core.accounts.models import AuditEvent
from tuneloop.core.deps import AdminAccount, SessionDep, SettingsDep, StaffAccount
from tuneloop.core.errors import ApiError
from tuneloop.core.inputs import AfterCursor, OptionalId
from tuneloop.core.settings import Settings

router = APIRouter(tags=["corrections"])


class CorrectionCreate(BaseModel):
    answer: str = Field(description="the answer the bot should have given")
    message_id: OptionalId = Field(None, description="assistant message being corrected; omit for knowledge Q/A")
    question: str | None = Field(None, description="cleaned-up question; defaults to the user's message")
    key_facts: list[str] = Field(default_factory=list)
    alternative_questions: list[str] = Field(
        default_factory=list, description="other ways customers ask this (see GET .../phrasing-suggestions)")
    source: Literal["conversation", "knowledge"] | None = None
    submit: bool = Field(False, description="submit for approval right away")


class CorrectionUpdate(BaseModel):
    question: str | None = None
    answer: str | None = None
    key_facts: list[str] | None = None
    alternative_questions: list[str] | None = Field(None, description="replaces the list; [] removes them all")


class Approval(BaseModel):
    etag: str | None = Field(None, description="the etag of the revision you read (GET); or send If-Match")


class ContactDecision(BaseModel):
    action: Literal["keep", "mask"] = Field(description="keep: the company's own contacts (never masked again); "
                                            "mask: personal data, replaced by placeholders")


class Rejection(BaseModel):
    reason: str = Field(description="what the author should change")


def correction_as_dict(session: Session, settings: Settings, correction: Correction, *,
                       with_similar: bool | None = None) -> dict:
    """The correction plus, while it awaits a decision, approved near-duplicates and conflicts."""
    body = {"object": "correction", **correction.model_dump(mode="json", warnings=False),
            "etag": service.correction_etag(correction)}
    if with_similar is None:
        with_similar = correction.status in service.OPEN_STATUSES
    if with_similar:
        similar = [s.as_dict() for s in find_similar(session, settings, correction)]
        body["similar"], body["has_conflict"] = similar, any(s["conflict"] for s in similar)
    return body


@router.post("/v1/corrections", status_code=201)
def create(body: CorrectionCreate, staff: StaffAccount, session: SessionDep, settings: SettingsDep) -> dict:
    correction = service.create_correction(
        session, settings, actor=staff.username, answer=body.answer, message_id=body.message_id,
        question=body.question, key_facts=body.key_facts, alternative_questions=body.alternative_questions,
        source=CorrectionSource(body.source) if body.source else None,
        status=CorrectionStatus.submitted if body.submit else CorrectionStatus.draft)
    session.commit()
    return correction_as_dict(session, settings, correction)


@router.get("/v1/corrections")
def list_(_staff: StaffAccount, session: SessionDep, status: CorrectionStatus | None = None,
          lineage_id: str | None = None, message_id: str | None = None,
          limit: int = Query(50, ge=1, le=200), offset: AfterCursor = 0) -> dict:
    rows, has_more = service.list_corrections(session, status=status, lineage_id=lineage_id, message_id=message_id,
                                              limit=limit, offset=offset)
    return {"object": "list", "data": [{"object": "correction", **c.model_dump(mode="json", warnings=False)} for c in rows],
            "has_more": has_more, "next_after": offset + limit if has_more else None}


@router.get("/v1/corrections/{correction_id}")
def get(correction_id: str, _staff: StaffAccount, session: SessionDep, settings: SettingsDep,
        response: Response) -> dict:
    body = correction_as_dict(session, settings, service.get_correction(session, correction_id))
    response.headers["ETag"] = f'"{body["etag"]}"'
    return body


@router.patch("/v1/corrections/{correction_id}")
def update(correction_id: str, body: CorrectionUpdate, staff: StaffAccount, session: SessionDep,
           settings: SettingsDep) -> dict:
    correction = service.update_correction(session, settings, correction_id, actor=staff.username,
                                           question=body.question, answer=body.answer, key_facts=body.key_facts,
                                           alternative_questions=body.alternative_questions)
    session.commit()
    return correction_as_dict(session, settings, correction)


@router.post("/v1/corrections/{correction_id}/submit")
def submit(correction_id: str, staff: StaffAccount, session: SessionDep, settings: SettingsDep) -> dict:
    correction = service.submit_correction(session, correction_id, actor=staff.username)
    session.commit()
    return correction_as_dict(session, settings, correction, with_similar=True)


@router.post("/v1/corrections/{correction_id}/approve")
def approve(correction_id: str, staff: StaffAccount, session: SessionDep, settings: SettingsDep,
            body: Approval | None = None, if_match: str | None = Header(None)) -> dict:
    """Approve the exact revision read: its etag (from GET) as If-Match or in the body; stale -> 409."""
    etag = _one_etag(body.etag if body else None, if_match)
    if not etag:
        raise ApiError(428, "name the revision you approve: send the etag from GET /v1/corrections/{id} as "
                            "'If-Match' or as {\"etag\": ...}", param="etag", code="etag_required")
    correction = service.approve_correction(session, settings, correction_id, actor=staff.username, etag=etag)
    session.commit()
    return correction_as_dict(session, settings, correction)


def _one_etag(in_body: str | None, if_match: str | None) -> str | None:
    """The revision an approval names. If-Match and a body etag that differ name two revisions, and which
    one the reviewer read is unknown: refused rather than guessed (the body used to win silently)."""
    if in_body and if_match and service.bare_etag(in_body) != service.bare_etag(if_match):
        raise ApiError(400, f"If-Match ({if_match}) and the body's etag ({in_body}) name different revisions; send "
                            "one of them: the etag of the text you read (GET /v1/corrections/{id}).",
                       param="etag", code="etag_mismatch")
    return in_body or if_match


@router.post("/v1/corrections/{correction_id}/contacts")
def decide_contacts(correction_id: str, body: ContactDecision, staff: StaffAccount, session: SessionDep,
                    settings: SettingsDep) -> dict:
    """Keep or mask the contacts detected in a staff-written answer (see feedback.corrections.contacts)."""
    correction = contacts.decide(session, settings, service.get_correction(session, correction_id),
                                 actor=staff.username, action=body.action)
    session.commit()
    return correction_as_dict(session, settings, correction)


@router.post("/v1/corrections/{correction_id}/reject")
def reject(correction_id: str, body: Rejection, staff: StaffAccount, session: SessionDep,
           settings: SettingsDep) -> dict:
    correction = service.reject_correction(session, settings, correction_id, actor=staff.username,
                                           reason=body.reason)
    session.commit()
    return correction_as_dict(session, settings, correction)


@router.get("/v1/audit")
def audit_log(_admin: AdminAccount, session: SessionDep, object_type: str | None = None,
              object_id: str | None = None, actor: str | None = None,
              limit: int = Query(100, ge=1, le=1000), offset: AfterCursor = 0) -> dict:
    query = select(AuditEvent)
    for column, value in ((AuditEvent.object_type, object_type), (AuditEvent.object_id, object_id),
                          (AuditEvent.actor, actor)):
        if value:
            query = query.where(column == value)
    rows = session.exec(query.order_by(col(AuditEvent.id).desc()).offset(offset).limit(limit + 1)).all()
    return {"object": "list", "data": [r.model_dump(mode="json", warnings=False) for r in rows[:limit]],
            "has_more": len(rows) > limit, "next_after": offset + limit if len(rows) > limit else None}

