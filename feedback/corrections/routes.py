"""Corrections, their approval and the audit log over HTTP (thin: see feedback.corrections)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Form, Header, Query, Response, UploadFile, Request
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from feedback.corrections import contacts, service
from feedback.corrections.models import Correction, CorrectionSource, CorrectionStatus
from feedback.corrections.phrasings import suggest_phrasings
from feedback.corrections.similarity import find_similar
from feedback.importer import import_file as run_import, save_upload
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


@router.get("/v1/corrections/{correction_id}/phrasing-suggestions")
def phrasing_suggestions(correction_id: str, request: Request, _staff: StaffAccount, session: SessionDep,
                         settings: SettingsDep, sources: str = Query("logs,model,teacher",
                                                                     description="comma-separated: logs, model, teacher"),
                         limit: int = Query(10, ge=1, le=50)) -> dict:
    """Other ways customers ask this correction's question, each routed to it by correction memory;
    accept them by PATCHing ``alternative_questions``."""
    correction = service.get_correction(session, correction_id)
    found, skipped = suggest_phrasings(session, settings, correction, runtime=request.app.state.runtime,
                                       sources=tuple(s.strip() for s in sources.split(",") if s.strip()),
                                       limit=limit)
    return {"object": "list", "correction_id": correction.id, "data": [s.as_dict() for s in found],
            "skipped": skipped}


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
    etag = (body.etag if body else None) or if_match
    if not etag:
        raise ApiError(428, "name the revision you approve: send the etag from GET /v1/corrections/{id} as "
                            "'If-Match' or as {\"etag\": ...}", param="etag", code="etag_required")
    correction = service.approve_correction(session, settings, correction_id, actor=staff.username, etag=etag)
    session.commit()
    return correction_as_dict(session, settings, correction)


@router.post("/v1/corrections/{correction_id}/contacts")
def decide_contacts(correction_id: str, body: ContactDecision, staff: StaffAccount, session: SessionDep,
                    settings: SettingsDep) -> dict:
    """Keep or mask the contacts detected in a staff-written answer (see feedback.contacts)."""
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


@router.post("/v1/corrections/import", status_code=201)
def import_file(file: UploadFile, staff: StaffAccount, session: SessionDep, settings: SettingsDep,
                      status: Literal["approved", "submitted"] = Form("submitted")) -> dict:
    """Import question/answer pairs from CSV, TSV, XLSX, JSON or JSONL: all rows or none.
    Importing straight to ``approved`` skips two-person review and needs an admin."""
    if status == "approved" and str(staff.role) != "admin":
        raise ApiError(403, "importing as approved skips review and needs an admin; import as submitted instead",
                       type="permission_error")
    with save_upload(file, settings) as path:
        created = run_import(session, settings, path, actor=staff.username, status=CorrectionStatus(status))
        session.commit()
    return {"object": "import", "imported": len(created), "ids": [c.id for c in created]}


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

