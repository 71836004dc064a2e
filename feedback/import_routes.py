"""Importing corrections from a file over HTTP (thin: see feedback.importer, which is built on
feedback.corrections and so is not among its routes)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Form, UploadFile

from feedback.corrections.models import CorrectionStatus
from feedback.importer import import_file as run_import, save_upload
from tuneloop.core.deps import SessionDep, SettingsDep, StaffAccount
from tuneloop.core.errors import ApiError

router = APIRouter(tags=["corrections"])


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
