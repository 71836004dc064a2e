"""Backups that move between instances and database engines: ``tuneloop export`` / ``tuneloop import``.

An archive is a ``.tar.gz`` holding

* ``manifest.json``: format, tuneloop version, schema revision, and per table the row count, the
  columns and the SHA-256 of its JSONL file; per data file its SHA-256;
* ``tables/<table>.jsonl``: every row of every table (conversations, messages, ratings, review
  decisions, corrections, accounts with password/key hashes, the audit log, snapshots, jobs, model
  versions and the production pointer, …), one canonical JSON object per line, sorted by primary key,
  so the same data gives the same bytes on SQLite and PostgreSQL;
* ``files/…``: the files the rows point at, relative to the data directory: dataset snapshots,
  LoRA adapters of model versions, uploaded training files. Base models are not included.

Import restores into an empty instance only, in one database transaction.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import DateTime, Integer, Table, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

import tuneloop
from tuneloop import schema
from tuneloop.core.settings import Settings
from tuneloop.core import errors

ARCHIVE_FORMAT = 1
# What a freshly started instance already holds (version 0, its pointer, the first admin, the
# scheduler's lease): import replaces these rather than refusing.
_BOOTSTRAP_TABLES = {"modelversion", "productionpointer", "account", "auditevent", "schedulerstate"}


class BackupError(errors.InvalidInputError):
    pass


# --- export -----------------------------------------------------------------------------------------
def export_archive(db: Engine, settings: Settings, archive: Path) -> dict[str, Any]:
    """Write every table and the files they reference to ``archive``; returns the manifest."""
    schema.import_all_models()
    revision = schema.current_revision(db)
    if revision is None:
        raise BackupError("This database has no tuneloop schema; nothing to export (check TUNELOOP_DATABASE_URL).")
    manifest: dict[str, Any] = {
        "format": ARCHIVE_FORMAT, "tuneloop_version": tuneloop.__version__, "schema_revision": revision,
        "created_at": datetime.now(UTC).isoformat(), "source": db.dialect.name, "tables": {}, "files": {},
    }
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".export-", suffix=".tar.gz", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(partial, "w:gz") as tar, _snapshot_connection(db) as conn:
            for table in SQLModel.metadata.sorted_tables:
                payload = table_jsonl(conn, table)
                _add_bytes(tar, f"tables/{table.name}.jsonl", payload)
                manifest["tables"][table.name] = {
                    "rows": payload.count(b"\n"), "sha256": hashlib.sha256(payload).hexdigest(),
                    "columns": [c.name for c in table.columns],
                }
            for rel, path in referenced_files(conn, settings):
                data = path.read_bytes()
                _add_bytes(tar, f"files/{rel}", data)
                manifest["files"][rel] = hashlib.sha256(data).hexdigest()
            _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        os.replace(partial, archive)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return manifest


@contextmanager
def _snapshot_connection(db: Engine) -> Iterator[Connection]:
    """One read transaction for the whole export, so the tables agree with each other."""
    options = {"isolation_level": "REPEATABLE READ"} if db.dialect.name == "postgresql" else {}
    with db.connect().execution_options(**options) as conn, conn.begin():
        yield conn


def table_jsonl(conn: Connection, table: Table) -> bytes:
    """The table's rows as canonical JSON lines, sorted by primary key."""
    rows = [dict(row) for row in conn.execute(select(table)).mappings()]
    keys = [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]
    rows.sort(key=lambda row: tuple((row[k] is None, row[k]) for k in keys))
    return b"".join(
        json.dumps({k: _encode(v) for k, v in row.items()}, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        for row in rows
    )


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.isoformat()
    return value


def referenced_files(conn: Connection, settings: Settings) -> list[tuple[str, Path]]:
    """(path relative to the data dir, absolute path) of every file the rows point at."""
    from registry.models import ModelVersion
    from retrain.models import DatasetSnapshot, TrainingFile

    roots: list[Path] = []
    roots += [settings.datasets_dir / p for p in conn.execute(select(DatasetSnapshot.path)).scalars() if p]
    roots += [settings.model_store_dir / p for p in conn.execute(select(ModelVersion.adapter_path)).scalars() if p]
    roots += [settings.data_dir / p for p in conn.execute(select(TrainingFile.path)).scalars() if p]
    data_dir = settings.data_dir.resolve()
    found: dict[str, Path] = {}
    for root in roots:
        root = root.resolve()
        if not root.exists() or not root.is_relative_to(data_dir):
            continue
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                found[path.relative_to(data_dir).as_posix()] = path
    return sorted(found.items())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


# --- import -----------------------------------------------------------------------------------------
def import_archive(db: Engine, settings: Settings, archive: Path) -> dict[str, Any]:
    """Restore ``archive`` into the (migrated, empty) database of ``db`` and the data directory."""
    schema.import_all_models()
    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        if "manifest.json" not in members:
            raise BackupError(f"{archive} is not a tuneloop export (no manifest.json).")
        manifest = json.loads(tar.extractfile(members["manifest.json"]).read())
        _check_compatible(db, manifest)
        tables = {name: _verified(tar, members, f"tables/{name}.jsonl", meta["sha256"])
                  for name, meta in manifest["tables"].items()}
        files = {rel: _verified(tar, members, f"files/{rel}", sha) for rel, sha in manifest["files"].items()}

    _refuse_unless_empty(db)
    for rel, data in files.items():  # first: orphan files are harmless if the database import fails
        target = settings.data_dir / _safe_relative(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    with db.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            conn.execute(table.delete())  # the bootstrap rows of a fresh instance
        for table in SQLModel.metadata.sorted_tables:
            rows = [_decode_row(table, json.loads(line)) for line in tables.get(table.name, b"").splitlines()]
            for start in range(0, len(rows), 1000):
                conn.execute(table.insert(), rows[start:start + 1000])
        if conn.dialect.name == "postgresql":
            _reset_sequences(conn)
    return manifest


def _check_compatible(db: Engine, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise BackupError(f"Archive format {manifest.get('format')!r} is not supported (expected {ARCHIVE_FORMAT}).")
    revision = schema.current_revision(db)
    if manifest["schema_revision"] != revision:
        raise BackupError(
            f"The archive has schema revision {manifest['schema_revision']}, this database {revision}; import it "
            "with the tuneloop release that exported it, then upgrade."
        )
    known = {t.name: {c.name for c in t.columns} for t in SQLModel.metadata.sorted_tables}
    for name, meta in manifest["tables"].items():
        if name not in known or set(meta["columns"]) != known[name]:
            raise BackupError(f"Table {name!r} in the archive does not match this release's schema.")


def _verified(tar: tarfile.TarFile, members: dict, name: str, sha256: str) -> bytes:
    if name not in members:
        raise BackupError(f"The archive is incomplete: {name} is missing.")
    data = tar.extractfile(members[name]).read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BackupError(f"The archive is damaged: {name} does not match its checksum.")
    return data


def _safe_relative(rel: str) -> Path:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        raise BackupError(f"Refusing a file path outside the data directory: {rel!r}")
    return Path(*path.parts)


def table_counts(conn: Connection) -> dict[str, int]:
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in SQLModel.metadata.sorted_tables}


def _refuse_unless_empty(db: Engine) -> None:
    from registry.models import ModelVersion
    from tuneloop.core.accounts.models import AuditEvent

    with db.connect() as conn:
        counts = table_counts(conn)
        versions = set(conn.execute(select(ModelVersion.id)).scalars())
        actions = set(conn.execute(select(AuditEvent.action)).scalars())
    holding = {name: n for name, n in counts.items() if n and name not in _BOOTSTRAP_TABLES}
    if versions - {"v0"}:
        holding["modelversion"] = len(versions)
    if counts.get("account", 0) > 1 or actions - {"account.created"}:
        holding["account/auditevent"] = counts.get("account", 0) + counts.get("auditevent", 0)
    if holding:
        summary = ", ".join(f"{n} {name}" for name, n in sorted(holding.items()))
        raise BackupError(
            f"The target database is not empty ({summary}); import restores into a new instance only. "
            "Point TUNELOOP_DATABASE_URL at an empty database and run the import again."
        )


def _decode_row(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    for column in table.columns:
        value = row.get(column.name)
        if isinstance(value, str) and _is_type(column, DateTime):
            row[column.name] = datetime.fromisoformat(value)
    return row


def _is_type(column, sql_type: type) -> bool:
    """``column`` stores ``sql_type`` (directly, or under a TypeDecorator such as SQLModel's UTCDateTime)."""
    return isinstance(column.type, sql_type) or isinstance(getattr(column.type, "impl_instance", None), sql_type)


def _reset_sequences(conn: Connection) -> None:
    """Integer ids were inserted explicitly; move each sequence past them so new rows do not collide."""
    for table in SQLModel.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True or (column.autoincrement == "auto" and _is_type(column, Integer)):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                         f'(SELECT COALESCE(MAX("{column.name}"), 0) + 1 FROM "{table.name}"), false)'),
                    {"table": table.name, "column": column.name},
                )
