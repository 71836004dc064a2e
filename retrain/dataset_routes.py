"""Dataset snapshots over HTTP (thin: see retrain.datasets)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from retrain import datasets
from tuneloop.core.deps import SessionDep, SettingsDep, StaffAccount

router = APIRouter(tags=["datasets"])


@router.post("/v1/datasets/snapshots", status_code=201)
def create(staff: StaffAccount, session: SessionDep, settings: SettingsDep) -> dict:
    """Freeze the approved examples now; the same content returns the existing snapshot."""
    snapshot = datasets.create_snapshot(session, settings, staff.username)
    session.commit()
    return datasets.snapshot_as_dict(snapshot)


@router.get("/v1/datasets/snapshots")
def list_(_staff: StaffAccount, session: SessionDep, limit: int = Query(50, ge=1, le=500)) -> dict:
    return {"object": "list", "data": [datasets.snapshot_as_dict(s) for s in datasets.list_snapshots(session, limit=limit)]}


@router.get("/v1/datasets/snapshots/{snapshot_id}")
def get(snapshot_id: str, _staff: StaffAccount, session: SessionDep, settings: SettingsDep) -> dict:
    snapshot = datasets.get_snapshot(session, snapshot_id)
    return {**datasets.snapshot_as_dict(snapshot), "manifest": datasets.read_manifest(settings, snapshot)}
