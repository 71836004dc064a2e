"""The model registry and the golden set over HTTP (thin: see registry.lifecycle, registry.golden).
Reads need staff, every change of production needs an admin. (Running the gates: retrain.gates.routes.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from engine.upstream import UpstreamAdapterError
from registry import golden, lifecycle as registry
from registry.checkpoints import CHECKPOINT_MARK
from registry.models import VersionStatus
from registry.versions import UnknownModelError, resolve_model
from tuneloop.core.deps import AdminAccount, SessionDep, SettingsDep, StaffAccount
from tuneloop.core.errors import ApiError

log = logging.getLogger(__name__)
router = APIRouter(tags=["registry"])


class PromoteBody(BaseModel):
    reason: str | None = Field(None, description="Required to override failed gates; recorded.")
    expected_production: str | None = Field(None, description="The version you saw in production (conflict check).")


class RejectBody(BaseModel):
    reason: str = Field(min_length=1)


class RollbackBody(BaseModel):
    version_id: str
    reason: str | None = None
    expected_production: str | None = None


class GoldenBody(BaseModel):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    key_facts: list[str] = Field(default_factory=list)


# --- versions ----------------------------------------------------------------------------------
@router.get("/v1/registry/versions")
def list_versions(_staff: StaffAccount, session: SessionDep, limit: int = Query(20, ge=1, le=100),
                  after: str | None = None, status: VersionStatus | None = None) -> dict:
    rows, has_more = registry.list_versions(session, limit=limit, after=after, status=status)
    data = [registry.version_as_dict(session, v) for v in rows]
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/v1/registry/versions/{version_id}")
def get_version(version_id: str, _staff: StaffAccount, session: SessionDep) -> dict:
    return registry.version_as_dict(session, registry.get_version(session, version_id), detail=True)


@router.get("/v1/registry/versions/{version_id}/gate-report")
def get_gate_report(version_id: str, _staff: StaffAccount, session: SessionDep) -> dict:
    report = registry.gate_report_for(session, registry.get_version(session, version_id))
    if report is None:
        raise ApiError(404, f"{version_id} has not been gated yet; POST /v1/registry/versions/{version_id}/gates",
                       type="not_found_error", code="not_found")
    return registry.report_as_dict(report)


def follow_pointer(request: Request) -> None:
    """Swap this process to the new production version now; other processes follow within
    ``version_poll_seconds``. A load failure is logged; the runtime keeps retrying on its own."""
    runtime = request.app.state.runtime
    try:
        runtime.sync_with_pointer()
    except Exception:  # noqa: BLE001  (production already moved; serving catches up by polling)
        log.exception("swapping to the new production version failed; the poller will retry")


@contextmanager
def _upstream_refusal() -> Iterator[None]:
    """The runtime's ``prepare`` (vLLM loads the adapter before production moves) refusing, as a 502."""
    try:
        yield
    except UpstreamAdapterError as exc:
        raise ApiError(502, f"{exc} Production is unchanged.", type="upstream_error",
                       code="adapter_not_loaded") from exc


def _changed_production(request: Request, session: SessionDep, version) -> dict:
    session.commit()
    follow_pointer(request)
    return registry.version_as_dict(session, version, detail=True)


@router.post("/v1/registry/versions/{version_id}/promote")
def promote(version_id: str, admin: AdminAccount, request: Request, session: SessionDep, settings: SettingsDep,
            body: PromoteBody | None = None) -> dict:
    body = body or PromoteBody()
    with _upstream_refusal():
        version = registry.promote(session, settings, version_id, admin, reason=body.reason,
                                   expected_production=body.expected_production,
                                   prepare=request.app.state.runtime.prepare)
    return _changed_production(request, session, version)


@router.post("/v1/registry/rollback")
def rollback(body: RollbackBody, admin: AdminAccount, request: Request, session: SessionDep,
             settings: SettingsDep) -> dict:
    with _upstream_refusal():
        version = registry.rollback(session, settings, body.version_id, admin, reason=body.reason,
                                    expected_production=body.expected_production,
                                    prepare=request.app.state.runtime.prepare)
    return _changed_production(request, session, version)


@router.post("/v1/registry/versions/{version_id}/reject")
def reject(version_id: str, body: RejectBody, admin: AdminAccount, session: SessionDep) -> dict:
    version = registry.reject(session, version_id, admin, body.reason)
    session.commit()
    return registry.version_as_dict(session, version)


@router.delete("/v1/models/{model:path}", tags=["models"])
def delete_model(model: str, admin: AdminAccount, session: SessionDep, settings: SettingsDep) -> dict:
    """OpenAI's models.delete: a fine-tuned version that is not in production (by id, name or alias)."""
    try:
        version = resolve_model(session, settings, model)
    except UnknownModelError as exc:
        raise ApiError(404, str(exc), type="not_found_error", param="model", code="model_not_found") from exc

    if CHECKPOINT_MARK in version.id:
        raise ApiError(400, f"{model} is a checkpoint; it goes when its model {version.id.split(':')[0]} is deleted",
                       param="model")
    registry.delete(session, settings, version.id, admin)
    session.commit()
    return {"id": model, "object": "model", "deleted": True}


@router.delete("/v1/registry/versions/{version_id}")
def delete(version_id: str, admin: AdminAccount, session: SessionDep, settings: SettingsDep) -> dict:
    version = registry.delete(session, settings, version_id, admin)
    session.commit()
    return {"id": version.id, "object": "model.version.deleted", "deleted": True}


# --- golden set --------------------------------------------------------------------------------
@router.get("/v1/golden")
def list_golden(_admin: AdminAccount, session: SessionDep) -> dict:
    return {"object": "list", "data": [golden.golden_as_dict(g) for g in golden.list_golden(session)]}


@router.post("/v1/golden", status_code=201)
def add_golden(body: GoldenBody, admin: AdminAccount, session: SessionDep) -> dict:
    example = golden.add_golden(session, question=body.question, answer=body.answer,
                                key_facts=body.key_facts, actor=admin.username)
    session.commit()
    return golden.golden_as_dict(example)


@router.delete("/v1/golden/{golden_id}")
def remove_golden(golden_id: str, admin: AdminAccount, session: SessionDep) -> dict:
    golden.remove_golden(session, golden_id, actor=admin.username)
    session.commit()
    return {"id": golden_id, "object": "golden_example.deleted", "deleted": True}
