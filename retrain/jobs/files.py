"""Files uploaded for fine-tuning (OpenAI's files API): stored under ``data_dir/files/<id>.jsonl``,
checked when a job that uses them starts (chat lines, or legacy prompt/completion lines, which train
the completion after the prompt as written). A job's result.csv is stored here too, as a file of
purpose ``fine-tune-results``."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import Session, col, select

from feedback.datafiles import COMPLETION_NAMES, PROMPT_NAMES
from feedback.validate import validate_file
from retrain.jobs.job_request import JobConflictError, JobError, JobForbiddenError, JobNotFoundError
from retrain.jobs.service import ACTIVE
from retrain.models import FineTuneJob, TrainingFile
from tuneloop.core import errors
from tuneloop.core.accounts.service import audit
from tuneloop.core.ids import utcnow
from tuneloop.core.inputs import lone_surrogate_path
from tuneloop.core.settings import Settings


class FileTooLargeError(errors.TooLargeError, JobError):
    """An upload over ``settings.max_upload_bytes`` (413)."""


def files_dir(settings: Settings) -> Path:
    return settings.data_dir / "files"


def save_upload(session: Session, settings: Settings, *, filename: str, content: bytes,
                purpose: str = "fine-tune", actor: str | None = None) -> TrainingFile:
    """Store an upload after a cheap check that it is JSONL; the full check runs when a job starts."""
    if purpose != "fine-tune":
        raise JobError(f"purpose must be 'fine-tune', not {purpose!r}", "purpose")
    if len(content) > settings.max_upload_bytes:
        raise FileTooLargeError(f"the file is {len(content)} bytes; the limit is {settings.max_upload_bytes} "
                                "(TUNELOOP_MAX_UPLOAD_BYTES)", "file")
    try:
        lines = [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobError(f"{filename} is not JSONL (one JSON object per line): {exc}", "file") from exc
    if not lines or not all(isinstance(line, dict) for line in lines):
        raise JobError(f"{filename} is not JSONL: expected one JSON object per line", "file")

    broken = next(((n, path) for n, line in enumerate(lines, 1) if (path := lone_surrogate_path(line)) is not None),
                  None)
    if broken is not None:
        raise JobError(f"{filename} line {broken[0]} ({broken[1] or 'a key'}): text contains a lone UTF-16 surrogate "
                       "(e.g. \\ud800), which is not a character; fix it and upload again", "file")
    record = TrainingFile(filename=filename, purpose=purpose, bytes=len(content), path="", created_by=actor)
    record.path = f"{record.id}.jsonl"
    files_dir(settings).mkdir(parents=True, exist_ok=True)
    (files_dir(settings) / record.path).write_bytes(content)
    session.add(record)
    session.flush()
    return record


def approve_file(session: Session, file_id: str, *, actor: str) -> TrainingFile:
    """A second person vouches for an uploaded file's content, so a staff member may train on it."""

    record = get_file(session, file_id)
    if record.created_by == actor:
        raise JobForbiddenError(f"you uploaded {record.id}; another staff member must review and approve it", "file")
    if record.approved_by:
        raise JobConflictError(f"{record.id} was already approved by {record.approved_by}", "file")
    record.approved_by, record.approved_at = actor, utcnow()
    session.add(record)
    audit(session, actor=actor, action="file.approved", object_type="trainingfile", object_id=record.id,
          uploaded_by=record.created_by)
    return record


def get_file(session: Session, file_id: str) -> TrainingFile:
    record = session.get(TrainingFile, file_id)
    if record is None:
        raise JobNotFoundError(f"no file {file_id!r}")
    return record


def list_files(session: Session, *, purpose: str | None = None, order: str = "desc", after: str | None = None,
               limit: int | None = None) -> tuple[list[TrainingFile], bool]:
    """Files newest first (``order="asc"``: oldest first), optionally of one ``purpose``; ``after`` is
    the id of the last file of the previous page. Returns (files, has_more)."""
    if order not in ("asc", "desc"):
        raise JobError(f"order must be 'asc' or 'desc', not {order!r}", "order")
    created, ident = col(TrainingFile.created_at), col(TrainingFile.id)
    query = select(TrainingFile)
    if purpose:
        query = query.where(TrainingFile.purpose == purpose)
    if after:
        cursor = session.get(TrainingFile, after)
        if cursor is None:
            raise JobError(f"after: no file {after!r}; pass the id of the last file of the previous page", "after")
        if order == "desc":
            query = query.where((created < cursor.created_at) | ((created == cursor.created_at) & (ident < cursor.id)))
        else:
            query = query.where((created > cursor.created_at) | ((created == cursor.created_at) & (ident > cursor.id)))
    query = query.order_by(created.desc(), ident.desc()) if order == "desc" else query.order_by(created, ident)
    rows = list(session.exec(query.limit(limit + 1) if limit else query))
    return (rows[:limit], len(rows) > limit) if limit else (rows, False)


def file_content(settings: Settings, record: TrainingFile) -> bytes:
    path = files_dir(settings) / record.path
    if not path.is_file():
        raise JobNotFoundError(f"the content of file {record.id!r} is gone from {files_dir(settings)}")
    return path.read_bytes()


def delete_file(session: Session, settings: Settings, file_id: str, *, actor: str, admin: bool) -> TrainingFile:
    """Delete a file and its content: its uploader or an admin may (403 for anyone else: a colleague's
    reviewed data is not theirs to remove); refused (409) while a job that has not finished uses it."""

    record = get_file(session, file_id)
    if not admin and record.created_by != actor:
        raise JobForbiddenError(f"{record.id} was uploaded by {record.created_by or 'the system'}; only they or an "
                                "admin may delete it", "file_id")
    user = session.exec(select(FineTuneJob).where(
        col(FineTuneJob.status).in_(ACTIVE),
        (FineTuneJob.training_file_id == file_id) | (FineTuneJob.validation_file_id == file_id))).first()
    if user is not None:
        raise JobConflictError(f"file {file_id} is used by fine-tuning job {user.id} ({user.status}); "
                               "cancel the job or wait until it finishes", "file_id")
    (files_dir(settings) / record.path).unlink(missing_ok=True)
    session.delete(record)
    session.flush()
    return record


def save_result_file(session: Session, settings: Settings, *, job_id: str, source: Path) -> TrainingFile:
    """A job's result.csv as a file object (purpose ``fine-tune-results``), downloadable by id."""
    content = source.read_bytes()
    record = TrainingFile(filename=f"{job_id}-result.csv", purpose="fine-tune-results", bytes=len(content), path="")
    record.path = f"{record.id}.csv"
    files_dir(settings).mkdir(parents=True, exist_ok=True)
    (files_dir(settings) / record.path).write_bytes(content)
    session.add(record)
    session.flush()
    return record


def read_examples(settings: Settings, record: TrainingFile) -> list[dict]:
    """The file's examples: chat lines as they are, legacy lines as ``{"prompt", "completion"}`` (the
    column names ``data validate`` accepts, such as "question"/"answer", are mapped)."""
    text = (files_dir(settings) / record.path).read_text(encoding="utf-8")
    return [_legacy_columns(json.loads(line)) for line in text.splitlines() if line.strip()]


def _legacy_columns(row: dict) -> dict:
    if "messages" in row or ("prompt" in row and "completion" in row):
        return row

    lookup = {str(k).strip().lower(): k for k in row}
    prompt = next((lookup[n] for n in PROMPT_NAMES if n in lookup), None)
    completion = next((lookup[n] for n in COMPLETION_NAMES if n in lookup), None)
    if prompt is None or completion is None:
        return row
    return {"prompt": str(row[prompt]), "completion": str(row[completion])}


def validate_training_file(settings: Settings, record: TrainingFile) -> list[str]:
    """Problems with an uploaded file, at most ten, each naming its line; empty when it is usable."""
    report = validate_file(files_dir(settings) / record.path, settings)
    return [str(e) for e in report.errors][:10]  # chat or legacy prompt/completion lines
