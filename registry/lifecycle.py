"""The model registry: every trained version, its lineage, and the one that is in production.

Lifecycle::

    candidate ──gates pass──▶ approved ──promote──▶ production ──next promotion──▶ retired
        │  └──promote with a written override of failed gates──▶ production          │
        └──reject──▶ rejected        (any non-production version) ──delete──▶ deleted  │
                                     retired/approved ◀──────────── rollback ──────────┘

Exactly one version is in production at all times (v0, the base model, on a fresh install).
Promotion and rollback move the production pointer with a compare-and-swap (``registry.versions.
set_production``): of two admins promoting at the same moment one wins and the other gets
``PromotionConflictError``; a failed promotion leaves production unchanged. Promotion never touches
model files; every API process notices the new pointer and hot-swaps. Each transition records who and
when on the version (``status_changed_by``/``_at``) and in the audit log.

All functions work in the caller's session and transaction (``session_scope``): the caller commits.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, func, select

from registry import versions
from registry.checkpoints import remove_checkpoints
from registry.models import ModelVersion, VersionStatus, GateReport
from tuneloop.core import errors
from tuneloop.core.accounts.models import Account, Role
from tuneloop.core.accounts.service import audit, has_role
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings


class RegistryError(errors.InvalidInputError):
    """A request the registry refuses as given (bad input); nothing changed."""


class VersionNotFoundError(errors.NotFoundError):
    code = "not_found"


class InvalidStateError(errors.ConflictError, RegistryError):
    """The version is in a state that does not allow this (rejected, deleted, files missing, …)."""

    code = "invalid_state"


class PromotionConflictError(errors.ConflictError):
    """Production changed while this promotion was being decided; nothing changed. Reload and retry."""

    code = "production_changed"


class NotAdminError(errors.ForbiddenError):
    pass


PROMOTABLE = (VersionStatus.candidate, VersionStatus.approved)
ROLLBACK_TARGETS = (VersionStatus.retired, VersionStatus.approved)
AUTO_PROMOTER = "auto-promote"  # the actor of a promotion by the system (audit log, status_changed_by)
# Called with the version before production moves to it; raises to refuse it (``bot.runtime.ServingRuntime.prepare``).
Prepare = Callable[[ModelVersion], None]


# --- registration ------------------------------------------------------------------------------
def register_candidate(session: Session, settings: Settings, *, job: Any, parent: ModelVersion | None,
                       adapter_path: str, snapshot_id: str | None, metrics: dict[str, Any],
                       hosted_model: str | None = None, training_data: dict[str, Any] | None = None) -> ModelVersion:
    """Record a freshly trained version as a candidate: the next ``vN``, named
    ``<alias>-vN[-<job suffix>]``, with its parent, job and snapshot (its lineage). ``adapter_path`` is
    relative to ``settings.model_store_dir``. ``training_data`` (``retrain.jobs.provenance``) says what it was
    trained on; it is kept in the version's metrics. Writes ``version.json`` (provenance) beside the adapter."""
    metrics = {**metrics, **({"training_data": training_data} if training_data else {})}
    number = (session.exec(select(func.max(ModelVersion.number))).one() or 0) + 1
    suffix = getattr(job, "suffix", None)
    name = f"{settings.production_alias}-v{number}" + (f"-{suffix}" if suffix else "")
    version = ModelVersion(
        id=f"v{number}", number=number, name=name,
        base_model=parent.base_model if parent else settings.base_model,
        adapter_path=adapter_path or None, hosted_model=hosted_model,
        parent_id=parent.id if parent else None, snapshot_id=snapshot_id,
        job_id=getattr(job, "id", None), metrics=dict(metrics), status=VersionStatus.candidate,
        status_changed_by="system",
    )
    session.add(version)
    audit(session, actor=getattr(job, "created_by", None) or "system", action="version.registered",
          object_type="modelversion", object_id=version.id, parent_id=version.parent_id,
          job_id=version.job_id, snapshot_id=snapshot_id)
    session.flush()
    _write_provenance(settings, version)
    return version


def _write_provenance(settings: Settings, version: ModelVersion) -> None:
    if not version.adapter_path:
        return
    directory = settings.model_store_dir / version.adapter_path
    if directory.is_dir():
        record = {k: getattr(version, k) for k in ("id", "name", "base_model", "parent_id", "snapshot_id", "job_id")}
        (directory / "version.json").write_text(json.dumps({**record, "metrics": version.metrics}, indent=2) + "\n")


# --- reading -----------------------------------------------------------------------------------
def get_version(session: Session, version_id: str) -> ModelVersion:
    version = session.get(ModelVersion, version_id) or session.exec(
        select(ModelVersion).where(ModelVersion.name == version_id)).first()  # ids and names both work
    if version is None:
        raise VersionNotFoundError(f"no model version {version_id!r}; list them with `tuneloop models list`")
    return version


def list_versions(session: Session, *, limit: int = 20, after: str | None = None,
                  status: VersionStatus | None = None) -> tuple[list[ModelVersion], bool]:
    """Newest first, one page at a time: pass the last id of a page as ``after`` for the next one."""
    query = select(ModelVersion)
    if status is not None:
        query = query.where(ModelVersion.status == status)
    if after:
        query = query.where(ModelVersion.number < get_version(session, after).number)
    rows = list(session.exec(query.order_by(col(ModelVersion.number).desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def lineage(session: Session, version: ModelVersion) -> list[ModelVersion]:
    """``version`` and its ancestors, newest first (each was trained from the next one)."""
    chain, seen = [version], {version.id}
    while chain[-1].parent_id and chain[-1].parent_id not in seen:
        parent = session.get(ModelVersion, chain[-1].parent_id)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent.id)
    return chain


def gate_report_for(session: Session, version: ModelVersion) -> GateReport | None:
    return session.get(GateReport, version.gate_report_id) if version.gate_report_id else None


# --- transitions -------------------------------------------------------------------------------
def promote(session: Session, settings: Settings, version_id: str, actor: Account, reason: str | None = None,
            expected_production: str | None = None, prepare: Prepare | None = None) -> ModelVersion:
    """Put a candidate (or approved version) into production; the old one is retired.

    Admins only. The version needs a passing gate report, or a failed one overridden with a written
    ``reason`` (recorded on the report and in the audit log). ``expected_production`` is the version
    the admin saw in production: if production has moved since, ``PromotionConflictError``.
    ``prepare`` (the serving runtime's) runs before production moves and may refuse the version.
    """
    _require_admin(actor)
    return _promote(session, settings, get_version(session, version_id), actor.username, reason=reason,
                    expected_production=expected_production, prepare=prepare)


def auto_promote(session: Session, settings: Settings, version: ModelVersion,
                 prepare: Prepare | None = None) -> ModelVersion:
    """Promotion by the system after every gate passed (``settings.auto_promote``): the same checks and
    ``prepare`` as an admin's ``promote``, with no admin to ask."""
    return _promote(session, settings, version, AUTO_PROMOTER, reason="all gates passed (auto_promote)",
                    prepare=prepare, may_override=False)


def _promote(session: Session, settings: Settings, version: ModelVersion, actor: str, *, reason: str | None,
             expected_production: str | None = None, prepare: Prepare | None = None,
             may_override: bool = True) -> ModelVersion:
    if version.status not in PROMOTABLE:
        hint = " use rollback for earlier versions" if version.status == VersionStatus.retired else ""
        raise InvalidStateError(f"{version.id} is {VersionStatus(version.status).value}; only candidate or approved versions "
                                f"can be promoted.{hint}".rstrip("."))
    report = gate_report_for(session, version)
    if report is None:
        raise InvalidStateError(f"{version.id} has no gate report; run the gates first "
                                f"(`tuneloop models gates {version.id}` or POST /v1/registry/versions/{version.id}/gates)")
    if not report.passed:
        if not may_override or not (reason or "").strip():
            raise RegistryError(f"{version.id} failed its gates ({'; '.join(report.summary.get('reasons', []))}); "
                                + ("to promote it anyway, give a written reason for the override" if may_override
                                   else "only an admin can override them"))
        report.override_reason, report.overridden_by, report.overridden_at = reason.strip(), actor, utcnow()
        session.add(report)
    return _move_production(session, settings, version, actor, action="version.promoted", reason=reason,
                            expected_production=expected_production, prepare=prepare,
                            gates_overridden=not report.passed)


def rollback(session: Session, settings: Settings, version_id: str, actor: Account, reason: str | None = None,
             expected_production: str | None = None, prepare: Prepare | None = None) -> ModelVersion:
    """Return production to an earlier (retired) or approved version, by the same path as promotion."""
    _require_admin(actor)
    version = get_version(session, version_id)
    if version.status not in ROLLBACK_TARGETS:
        raise InvalidStateError(f"{version.id} is {VersionStatus(version.status).value}; roll back only to a retired or approved version")
    return _move_production(session, settings, version, actor.username, action="version.rolled_back",
                            reason=reason, expected_production=expected_production, prepare=prepare)


def _move_production(session: Session, settings: Settings, version: ModelVersion, actor: str, *, action: str,
                     reason: str | None, expected_production: str | None = None, prepare: Prepare | None = None,
                     **detail: Any) -> ModelVersion:
    missing = missing_files(settings, version)
    if missing:
        raise InvalidStateError(f"{version.id} cannot be served: {missing}")
    pointer = versions.production_pointer(session)
    previous_id, revision = pointer.version_id, pointer.revision
    if expected_production is not None and expected_production != previous_id:
        raise PromotionConflictError(f"production is now {previous_id}, not {expected_production}; reload and try again")
    if previous_id == version.id:
        raise InvalidStateError(f"{version.id} is already in production")
    if prepare is not None:
        prepare(version)  # e.g. an upstream that cannot load the adapter refuses here: production stays
    try:
        versions.set_production(session, version.id, actor=actor, expected_revision=revision)
    except versions.ConcurrentChangeError as exc:
        raise PromotionConflictError(str(exc)) from exc
    except OperationalError as exc:  # SQLite: another writer committed first (the same race)
        raise PromotionConflictError("another promotion happened at the same moment; reload and try again") from exc
    previous = session.get(ModelVersion, previous_id)
    set_status(session, previous, VersionStatus.retired, actor)
    set_status(session, version, VersionStatus.production, actor)
    audit(session, actor=actor, action=action, object_type="modelversion", object_id=version.id,
          previous_production=previous_id, reason=reason or "", **detail)
    session.flush()
    return version


def reject(session: Session, version_id: str, actor: Account, reason: str) -> ModelVersion:
    """Mark a candidate or approved version as not to be served. Admins only; a reason is required."""
    _require_admin(actor)
    if not (reason or "").strip():
        raise RegistryError("give a reason for rejecting the version")
    version = get_version(session, version_id)
    if version.status not in PROMOTABLE:
        raise InvalidStateError(f"{version.id} is {VersionStatus(version.status).value}; only candidate or approved versions can be rejected")
    set_status(session, version, VersionStatus.rejected, actor.username)
    audit(session, actor=actor.username, action="version.rejected", object_type="modelversion",
          object_id=version.id, reason=reason.strip())
    session.flush()
    return version


def delete(session: Session, settings: Settings, version_id: str, actor: Account) -> ModelVersion:
    """Delete a version that is not in production: its adapter files and its job's checkpoints are removed,
    its row stays (status ``deleted``) so lineage and audit history still resolve. The base version cannot
    be deleted."""
    _require_admin(actor)
    version = get_version(session, version_id)
    if version.status == VersionStatus.production:
        raise InvalidStateError(f"{version.id} is in production; promote or roll back to another version first")
    if version.status == VersionStatus.deleted:
        raise InvalidStateError(f"{version.id} is already deleted")
    if not version.adapter_path and not version.hosted_model:
        raise InvalidStateError(f"{version.id} is the base model; it cannot be deleted")
    set_status(session, version, VersionStatus.deleted, actor.username)
    audit(session, actor=actor.username, action="version.deleted", object_type="modelversion", object_id=version.id,
          adapter_path=version.adapter_path)
    session.flush()
    _remove_adapter(settings, version)
    if version.job_id:
        remove_checkpoints(settings, version.job_id)
    return version


# --- helpers -----------------------------------------------------------------------------------
def missing_files(settings: Settings, version: ModelVersion) -> str | None:
    """Why ``version`` cannot be loaded from disk, or None when its files are all there."""
    if version.status == VersionStatus.deleted:
        return "it was deleted"
    if version.hosted_model:
        return None
    spec = versions.version_spec(version, settings)
    if not (spec.base_dir / "config.json").is_file():
        return f"the base model directory {spec.base_dir} is missing"
    if spec.adapter_dir is not None and not (spec.adapter_dir / "adapter_config.json").is_file():
        return f"its adapter is missing at {spec.adapter_dir}"
    return None


def _remove_adapter(settings: Settings, version: ModelVersion) -> None:
    if not version.adapter_path:
        return
    store = settings.model_store_dir.resolve()
    directory = (store / version.adapter_path).resolve()
    if directory != store and store in directory.parents and directory.is_dir():  # never outside the store
        shutil.rmtree(directory)


def set_status(session: Session, version: ModelVersion, status: VersionStatus, actor: str) -> None:
    version.status, version.status_changed_by, version.status_changed_at = status, actor, utcnow()
    session.add(version)


def _require_admin(actor: Account) -> None:
    if not has_role(actor, Role.admin):
        raise NotAdminError(f"only admins can change production; {actor.username} is {actor.role}")


def training_data(version: ModelVersion) -> dict[str, Any]:
    """Where a version's training data came from, as recorded when it was registered
    (``retrain.jobs.provenance``): approved corrections (a snapshot) or an uploaded file and who vouched for it."""
    recorded = (version.metrics or {}).get("training_data")
    return recorded or {"kind": "snapshot" if version.snapshot_id else "none", "snapshot_id": version.snapshot_id}


def training_data_label(data: dict[str, Any]) -> str:
    if data["kind"] != "uploaded_file":
        return data.get("snapshot_id") or ""
    return f"UPLOADED FILE {data['file_id']} (not approved corrections; reviewed by {data['reviewed_by']})"


def version_as_dict(session: Session, version: ModelVersion, *, detail: bool = False) -> dict[str, Any]:
    """The public view of a version; with ``detail`` also its lineage and gate report summary."""
    data = {
        "id": version.id, "object": "model.version", "name": version.name, "number": version.number,
        "status": VersionStatus(version.status).value,
        "base_model": version.base_model, "adapter_path": version.adapter_path,
        "hosted_model": version.hosted_model, "parent_id": version.parent_id, "snapshot_id": version.snapshot_id,
        "job_id": version.job_id, "gate_report_id": version.gate_report_id, "metrics": version.metrics,
        "created_at": version.created_at.isoformat(), "status_changed_at": version.status_changed_at.isoformat(),
        "status_changed_by": version.status_changed_by,
        "training_data": training_data(version),
    }
    if detail:
        report = gate_report_for(session, version)
        data["gate_report"] = report_summary(report) if report else None
        data["lineage"] = [
            {"id": v.id, "name": v.name, "status": VersionStatus(v.status).value, "snapshot_id": v.snapshot_id, "job_id": v.job_id,
             "gate_report_id": v.gate_report_id,
             "gates_passed": (r.passed if (r := gate_report_for(session, v)) else None)}
            for v in lineage(session, version)
        ]
    return data


def report_summary(report: GateReport) -> dict[str, Any]:
    return {"id": report.id, "passed": report.passed, "baseline_version_id": report.baseline_version_id,
            "created_at": report.created_at.isoformat(), "reasons": report.summary.get("reasons", []),
            "gates": report.summary.get("gates", {}), "override_reason": report.override_reason,
            "overridden_by": report.overridden_by}


def report_as_dict(report: GateReport) -> dict[str, Any]:
    return {**report_summary(report), "object": "gate.report", "candidate_version_id": report.candidate_version_id,
            "summary": report.summary, "items": report.items}


__all__ = ["register_candidate", "promote", "rollback", "reject", "delete", "auto_promote", "lineage",
           "list_versions", "get_version", "missing_files"]
