"""Reading question/answer files: CSV, TSV, XLSX, JSON (a list of objects) and JSONL, with
prompt/completion columns (or question/answer) or chat ``messages``. Shared by the validator and
the importer; every error names the file, the row and the fix."""

from __future__ import annotations

import csv
import difflib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import FeedbackError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".xlsx": "xlsx", ".json": "json", ".jsonl": "jsonl"}
PROMPT_NAMES = ("prompt", "question")
COMPLETION_NAMES = ("completion", "answer")


@dataclass
class DataFile:
    path: Path
    format: str  # csv | tsv | xlsx | json | jsonl
    columns: list[str]
    rows: list[dict[str, Any]]  # row number (1-based, header excluded) = index + 1

    @property
    def is_chat(self) -> bool:
        return "messages" in self.columns


def read_data_file(path: Path) -> DataFile:
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FeedbackError(f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
                            "use .csv, .tsv, .xlsx, .json or .jsonl")
    if not path.is_file():
        raise FeedbackError(f"{path}: no such file")
    reader = {"csv": _read_delimited, "tsv": _read_delimited, "xlsx": _read_xlsx, "json": _read_json,
              "jsonl": _read_jsonl}[fmt]
    rows = reader(path)
    columns: list[str] = list(rows.header) if isinstance(rows, _Rows) else []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return DataFile(path=path, format=fmt, columns=columns, rows=rows)


def find_columns(data: DataFile) -> tuple[str | None, str | None, list[str]]:
    """The prompt and completion columns and, for each one missing, a message that says what to rename."""
    lookup = {c.strip().lower(): c for c in data.columns if isinstance(c, str)}
    prompt = next((lookup[n] for n in PROMPT_NAMES if n in lookup), None)
    completion = next((lookup[n] for n in COMPLETION_NAMES if n in lookup), None)
    problems = []
    for found, wanted in ((prompt, PROMPT_NAMES), (completion, COMPLETION_NAMES)):
        if found is None:
            near = difflib.get_close_matches(wanted[0], list(lookup), n=1, cutoff=0.6) or \
                difflib.get_close_matches(wanted[1], list(lookup), n=1, cutoff=0.6)
            hint = f"; rename column {lookup[near[0]]!r} to {wanted[0]!r}" if near else \
                f"; add a {wanted[0]!r} column (or {wanted[1]!r})"
            problems.append(f"missing column {wanted[0]!r}{hint} (columns found: {', '.join(map(str, data.columns)) or 'none'})")
    return prompt, completion, problems


class _Rows(list):
    """Rows plus the header line of tabular files (so an empty file still shows its columns)."""

    def __init__(self, rows, header):
        super().__init__(rows)
        self.header = header


def _read_delimited(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedbackError(f"{path.name}: not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from exc
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        return _Rows([dict(r) for r in reader], header=reader.fieldnames or [])
    except csv.Error as exc:
        raise FeedbackError(f"{path.name}: not a valid {path.suffix[1:].upper()} file: {exc}") from exc


def _read_xlsx(path: Path) -> list[dict[str, Any]]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as exc:
        raise FeedbackError(f"{path.name}: not an Excel workbook; save it as .xlsx (or export CSV)") from exc
    try:
        values = list(workbook.worksheets[0].iter_rows(values_only=True))
    finally:
        workbook.close()
    if not values:
        return []
    header = ["" if h is None else str(h) for h in values[0]]
    return _Rows([{h: ("" if v is None else str(v)) for h, v in zip(header, row) if h}
            for row in values[1:] if any(v not in (None, "") for v in row)], header=[h for h in header if h])


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"{path.name}: not valid JSON ({exc}); for one object per line use .jsonl") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise FeedbackError(f"{path.name}: expected a JSON list of objects like "
                            '[{"prompt": "...", "completion": "..."}]')
    return data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FeedbackError(f"{path.name}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise FeedbackError(f"{path.name}, line {number}: each line must be a JSON object")
        rows.append(row)
    return rows
