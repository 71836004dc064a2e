"""``tuneloop data import``: question/answer pairs from a file become corrections, all or nothing.

Rows are read and checked first; only if every row is usable are corrections created, in the
caller's transaction. Prompt/completion files written for legacy fine-tuning are accepted too: the
separator, stop sequence and leading space are stripped."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import Session

from feedback.corrections.models import Correction, CorrectionSource, CorrectionStatus
from feedback.corrections.service import create_correction
from feedback.datafiles import FORMATS, find_columns, read_data_file
from feedback.errors import FeedbackError, FeedbackTooLargeError
from tuneloop.core.inputs import lone_surrogate_path
from tuneloop.core.settings import Settings


def read_pairs(path: Path, settings: Settings) -> list[tuple[str, str]]:
    """(question, answer) for every row, or a FeedbackError naming every unusable row."""
    data = read_data_file(path)
    if data.is_chat:
        pairs = [_chat_pair(row.get("messages")) for row in data.rows]
    else:
        prompt_col, completion_col, problems = find_columns(data)
        if problems:
            raise FeedbackError(f"{Path(path).name}: " + "; ".join(problems))
        pairs = [(_strip_prompt(str(r.get(prompt_col) or ""), settings),
                  _strip_completion(str(r.get(completion_col) or ""), settings)) for r in data.rows]

    broken = [n for n, pair in enumerate(pairs, 1) if lone_surrogate_path(list(pair)) is not None]
    if broken:
        raise FeedbackError(f"{Path(path).name}: rows {', '.join(map(str, broken[:20]))} contain a lone UTF-16 "
                            "surrogate (e.g. \\ud800), which is not a character; fix them and import again "
                            "(nothing was imported)")
    bad = [n for n, (q, a) in enumerate(pairs, 1) if not q or not a]
    if bad:
        raise FeedbackError(f"{Path(path).name}: rows {', '.join(map(str, bad[:20]))} have an empty question or "
                            "answer; fix them and import again (nothing was imported)")
    if not pairs:
        raise FeedbackError(f"{Path(path).name}: no rows to import")
    return pairs


def import_file(session: Session, settings: Settings, path: Path, *, actor: str,
                status: CorrectionStatus = CorrectionStatus.submitted) -> list[Correction]:
    if status not in (CorrectionStatus.approved, CorrectionStatus.submitted):
        raise FeedbackError("import status must be approved or submitted")
    pairs = read_pairs(Path(path), settings)
    return [create_correction(session, settings, actor=actor, question=q, answer=a,
                              source=CorrectionSource.imported, status=status,
                              origin={"file": Path(path).name, "row": n})
            for n, (q, a) in enumerate(pairs, 1)]


@contextmanager
def save_upload(upload, settings: Settings) -> Iterator[Path]:
    """Copy an uploaded file to a temporary path (keeping its extension), refusing more than
    ``settings.max_upload_bytes``."""
    suffix = Path(upload.filename or "").suffix.lower()
    if suffix not in FORMATS:
        raise FeedbackError(f"unsupported file type {suffix or '(none)'!r}; upload .csv, .tsv, .xlsx, .json or .jsonl")
    with tempfile.TemporaryDirectory(prefix="tuneloop-upload-") as tmp:
        target = Path(tmp) / f"upload{suffix}"
        written = 0
        with target.open("wb") as out:
            while chunk := upload.file.read(1 << 20):
                written += len(chunk)
                if written > settings.max_upload_bytes:
                    raise FeedbackTooLargeError(f"the file is larger than {settings.max_upload_bytes} bytes "
                                        "(TUNELOOP_MAX_UPLOAD_BYTES); split it and upload the parts")
                out.write(chunk)
        yield target


def _chat_pair(messages) -> tuple[str, str]:
    if not isinstance(messages, list) or len(messages) < 2:
        return "", ""
    last, users = messages[-1], [m for m in messages[:-1] if isinstance(m, dict) and m.get("role") == "user"]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not users:
        return "", ""
    return str(users[-1].get("content") or "").strip(), str(last.get("content") or "").strip()


def _strip_prompt(prompt: str, settings: Settings) -> str:
    prompt = prompt.strip()
    sep = settings.prompt_separator.strip()
    return prompt[: -len(sep)].strip() if sep and prompt.endswith(sep) else prompt


def _strip_completion(completion: str, settings: Settings) -> str:
    completion = completion.strip()
    stop = settings.completion_stop.strip()
    return completion[: -len(stop)].strip() if stop and completion.endswith(stop) else completion
