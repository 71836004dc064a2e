"""Files uploaded for fine-tuning (OpenAI's files API): stored under ``data_dir/files/<id>.jsonl``,
checked for the chat format when a job that uses them starts."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import Session, col, select

from retrain.jobs import JobError, JobNotFoundError
from retrain.models import TrainingFile
from tuneloop.settings import Settings

ROLES = {"system", "user", "assistant"}


class FileTooLargeError(JobError):
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
    from tuneloop.inputs import lone_surrogate_path

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
    from retrain.jobs import JobConflictError, JobForbiddenError
    from tuneloop.accounts.service import audit
    from tuneloop.db import utcnow

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


def list_files(session: Session) -> list[TrainingFile]:
    return list(session.exec(select(TrainingFile).order_by(col(TrainingFile.created_at).desc())))


def read_examples(settings: Settings, record: TrainingFile) -> list[dict]:
    text = (files_dir(settings) / record.path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def validate_training_file(settings: Settings, record: TrainingFile) -> list[str]:
    """Problems with an uploaded file, at most ten, each naming its line; empty when it is usable."""
    try:
        from feedback.validate import validate_file  # the full checker, where the feedback package has it
    except ImportError:
        validate_file = None
    if validate_file is not None:
        report = validate_file(files_dir(settings) / record.path, settings)
        problems = [str(e) for e in report.errors]
        if not problems and getattr(report, "kind", "chat") != "chat":
            problems.append("fine-tuning needs the chat format ({\"messages\": [...]} per line)")
        return problems[:10]
    return _minimal_chat_check(files_dir(settings) / record.path)


def _minimal_chat_check(path: Path) -> list[str]:
    problems: list[str] = []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return ["the file has no examples"]
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg})")
            continue
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            problems.append(f"line {number}: missing a 'messages' list")
        elif any(not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
                 for m in messages):
            problems.append(f"line {number}: every message needs a role (system/user/assistant) and text content")
        elif messages[-1]["role"] != "assistant":
            problems.append(f"line {number}: the last message must be the assistant's answer")
        if len(problems) >= 10:
            break
    return problems
