"""Model versions as serving sees them: the catalogue, the production pointer, name resolution.

The registry in retrain/ owns the lifecycle (candidate → approved → production → retired); it moves
the production pointer through ``set_production`` below. Serving only reads.
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, select

from engine.modelstore import resolve_base_model
from engine.protocol import VersionSpec
from registry.checkpoints import CHECKPOINT_MARK, checkpoint_adapters, checkpoint_name
from registry.models import ModelVersion, ProductionPointer, VersionStatus
from tuneloop.core import errors
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings


class UnknownModelError(errors.NotFoundError):
    param, code = "model", "model_not_found"


def ensure_base_version(session: Session, settings: Settings) -> ModelVersion:
    """On a fresh install the base model is version 0 and in production."""
    pointer = session.get(ProductionPointer, 1)
    if pointer is not None:
        return session.get(ModelVersion, pointer.version_id)
    v0 = ModelVersion(
        id="v0", number=0, name=f"{settings.production_alias}-v0-base", base_model=settings.base_model,
        status=VersionStatus.production,
    )
    session.add(v0)
    session.flush()
    session.add(ProductionPointer(version_id=v0.id))
    session.flush()
    return v0


def production_pointer(session: Session) -> ProductionPointer:
    pointer = session.get(ProductionPointer, 1)
    if pointer is None:
        raise RuntimeError("No production version: the database was not initialised (run `tuneloop db upgrade`).")
    return pointer


def production_version(session: Session) -> ModelVersion:
    return session.get(ModelVersion, production_pointer(session).version_id)


def resolve_model(session: Session, settings: Settings, name: str) -> ModelVersion:
    """Map an API ``model`` field to a version: the production alias, a version id or a version name."""
    if name == settings.production_alias:
        return production_version(session)
    if CHECKPOINT_MARK in name:
        return _checkpoint_version(session, settings, name)
    version = session.get(ModelVersion, name) or session.exec(
        select(ModelVersion).where(ModelVersion.name == name)
    ).first()
    if version is None or version.status in (VersionStatus.deleted,):
        raise UnknownModelError(
            f"The model {name!r} does not exist. Use {settings.production_alias!r} or an id from GET /v1/models."
        )
    return version


def _checkpoint_version(session: Session, settings: Settings, name: str) -> ModelVersion:
    """A transient (never stored) version for a checkpoint name, served like any other version."""
    parent_name, _, step = name.rpartition(CHECKPOINT_MARK)
    version = resolve_model(session, settings, parent_name)
    found = dict(checkpoint_adapters(settings, version))
    if not step.isdigit() or int(step) not in found:
        kept = ", ".join(checkpoint_name("", s) for s in found) or "none"
        raise UnknownModelError(f"The model {name!r} does not exist: {version.name} keeps the checkpoints {kept}.")
    directory = found[int(step)]
    return ModelVersion(id=f"{version.id}{CHECKPOINT_MARK}{step}", number=version.number, name=name,
                        base_model=version.base_model, adapter_path=str(directory.relative_to(settings.model_store_dir)),
                        prompt_format=version.prompt_format, parent_id=version.parent_id, job_id=version.job_id,
                        status=version.status, created_at=_mtime(directory))


def _mtime(path: Path):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def servable_versions(session: Session) -> list[ModelVersion]:
    return list(session.exec(
        select(ModelVersion).where(ModelVersion.status != VersionStatus.deleted).order_by(ModelVersion.number)
    ))


def set_production(session: Session, version_id: str, *, actor: str, expected_revision: int | None = None) -> ProductionPointer:
    """Point production at ``version_id``. With ``expected_revision`` this is a compare-and-swap:
    if someone else changed production meanwhile, nothing changes and ``ConcurrentChangeError`` is raised."""
    pointer = production_pointer(session)
    if expected_revision is not None and pointer.revision != expected_revision:
        raise ConcurrentChangeError(
            f"Production changed while you were deciding (now {pointer.version_id}); reload and try again."
        )
    from sqlalchemy import update

    result = session.exec(
        update(ProductionPointer)
        .where(ProductionPointer.id == 1, ProductionPointer.revision == pointer.revision)
        .values(version_id=version_id, revision=pointer.revision + 1, changed_at=utcnow(), changed_by=actor)
    )
    if result.rowcount != 1:
        raise ConcurrentChangeError("Another promotion happened at the same moment; reload and try again.")
    session.expire(pointer)
    return session.get(ProductionPointer, 1)


class ConcurrentChangeError(errors.ConflictError):
    pass


def version_spec(version: ModelVersion, settings: Settings) -> VersionSpec:
    """Where the files of ``version`` are, for the engine."""
    if version.base_model == settings.base_model:
        base_dir = resolve_base_model(settings)
    else:
        base_dir = Path(version.base_model)
    adapter = settings.model_store_dir / version.adapter_path if version.adapter_path else None
    return VersionSpec(id=version.id, base_dir=base_dir, adapter_dir=adapter)
