"""OpenAI's fine-tuning API served by tuneloop (/v1/files, /v1/fine_tuning/jobs). Thin: parse, call
retrain.jobs (service, files, progress), answer OpenAI's objects.

Object shapes follow the OpenAI API reference (fields in its order); our extras are fenced below.
``model`` is the version to continue from: a version id (v3), a name, or the production alias.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, Query, UploadFile, Request, Response
from pydantic import BaseModel, Field, field_validator

from registry.models import ModelVersion
from retrain.jobs import files as file_service, progress, service as jobs
from retrain.jobs.job_request import JobRequest
from retrain.models import FineTuneJob, JobEvent, TrainingFile
from retrain.trainer.config import TrainConfig
from tuneloop.core.accounts.service import audit
from tuneloop.core.deps import SessionDep, SettingsDep, StaffAccount
from tuneloop.core.errors import ParamError
from tuneloop.core.inputs import MAX_DB_INT, OptionalId

router = APIRouter(tags=["fine-tuning"])
SUPPORTED_METHODS = ("supervised", "dpo")


class CreateJobRequest(BaseModel):
    model: str
    training_file: OptionalId = None
    hyperparameters: dict[str, Any] | None = None
    suffix: str | None = None
    validation_file: OptionalId = None
    integrations: list[dict[str, Any]] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_DB_INT)
    method: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    # --- tuneloop extras ---------------------------------------------------------------------
    snapshot_id: OptionalId = None  # train on a dataset snapshot instead of an uploaded file
    backend: str = "local"  # local | openai (the hosted service in settings)

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            kinds = ", ".join(sorted({str(i.get("type", "?")) for i in value}))
            raise ParamError("integrations", f"integrations ({kinds}) are not supported: tuneloop sends nothing to "
                             "outside services. Follow the job's events (GET /v1/fine_tuning/jobs/{id}/events, "
                             "`tuneloop jobs follow`) and download its result file (result_files, a CSV of every "
                             "step's metrics) instead; pass integrations=[] or leave it out")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = (value or {}).get("type", "supervised")
        if kind not in SUPPORTED_METHODS:
            raise ParamError("method.type", f"method type {kind!r} is not supported; use one of "
                             f"{', '.join(repr(m) for m in SUPPORTED_METHODS)}")
        return value

    def merged_hyperparameters(self) -> dict[str, Any]:
        """Top-level hyperparameters (OpenAI's older field) under the method's own; DPO's beta excluded."""
        kind = (self.method or {}).get("type", "supervised")
        inner = ((self.method or {}).get(kind) or {}).get("hyperparameters") or {}
        return {k: v for k, v in {**(self.hyperparameters or {}), **inner}.items() if k != "beta"}

    def method_settings(self) -> dict[str, Any] | None:
        kind = (self.method or {}).get("type", "supervised")
        if kind == "supervised":
            return None
        beta = (((self.method or {}).get(kind) or {}).get("hyperparameters") or {}).get("beta", "auto")
        return {"type": kind, "beta": beta}


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def file_object(record: TrainingFile) -> dict[str, Any]:
    return {"id": record.id, "object": "file", "bytes": record.bytes, "created_at": _ts(record.created_at),
            "filename": record.filename, "purpose": record.purpose, "status": record.status, "status_details": None,
            # --- tuneloop extras: a staff member's job needs a file someone else approved
            "created_by": record.created_by, "approved_by": record.approved_by}


def effective_hyperparameters(job: FineTuneJob) -> dict[str, Any]:
    """What training used once it started; before that, what it will use as far as is known (requested
    values over TrainConfig's defaults; n_epochs may still be raised to reach min_steps). A hosted job
    shows "auto" where the hosted service decides."""
    if job.effective_hyperparameters:
        return dict(job.effective_hyperparameters)
    if job.backend != "local":
        return {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", **job.hyperparameters}
    from dataclasses import asdict


    return asdict(TrainConfig.from_dict({**job.hyperparameters, "seed": job.seed}))  # as the child will run it


def job_object(job: FineTuneJob, fine_tuned_model: str | None = None,
               estimated_finish: int | None = None) -> dict[str, Any]:
    full = effective_hyperparameters(job)
    hyperparameters = {k: full[k] for k in ("batch_size", "learning_rate_multiplier", "n_epochs")}
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": _ts(job.created_at),
        "error": job.error, "fine_tuned_model": fine_tuned_model, "finished_at": _ts(job.finished_at),
        "hyperparameters": hyperparameters, "model": job.parent_version_id, "organization_id": "org-tuneloop",
        "result_files": job.result_files, "seed": job.seed, "status": str(job.status),
        "trained_tokens": job.trained_tokens, "training_file": job.training_file_id or job.snapshot_id,
        "validation_file": job.validation_file_id, "estimated_finish": estimated_finish, "integrations": [],
        "metadata": job.user_metadata, "suffix": job.suffix,
        "method": method_object(job, hyperparameters),
        # --- tuneloop extras -----------------------------------------------------------------
        "backend": job.backend, "snapshot_id": job.snapshot_id, "result_version_id": job.result_version_id,
        "pause_requested": job.pause_requested,
        "hyperparameters_requested": job.hyperparameters, "hyperparameters_full": full,
    }


def method_object(job: FineTuneJob, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's method; a scheduled supervised_then_dpo round is supervised with our extra ``then_dpo``."""
    kind = (job.method or {}).get("type")
    if kind == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyperparameters, "beta": job.method["beta"]}}}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    if kind == "supervised_then_dpo":
        method["then_dpo"] = {"hyperparameters": {"beta": job.method["beta"]}}  # tuneloop extra
    return method


def job_response(session, job: FineTuneJob) -> dict[str, Any]:
    version = session.get(ModelVersion, job.result_version_id) if job.result_version_id else None
    return job_object(job, version.name if version else None, _ts(progress.estimated_finish(session, job)))


def event_object(event: JobEvent) -> dict[str, Any]:
    return {"id": f"ftevent-{event.id}", "object": "fine_tuning.job.event", "created_at": _ts(event.created_at),
            "level": event.level, "message": event.message, "data": event.data or {}, "type": event.type}


# --- files ----------------------------------------------------------------------------------------
@router.post("/v1/files")
async def upload_file(session: SessionDep, settings: SettingsDep, account: StaffAccount,
                      file: UploadFile = File(...), purpose: str = Form("fine-tune")):
    content = await file.read(settings.max_upload_bytes + 1)
    record = file_service.save_upload(session, settings, filename=file.filename or "upload.jsonl",
                                      content=content, purpose=purpose, actor=account.username)
    session.commit()
    return file_object(record)


@router.post("/v1/files/{file_id}/approve")
def approve_file(file_id: str, session: SessionDep, account: StaffAccount):
    """tuneloop extra: a second staff member has read the file and vouches for it as training data."""
    record = file_service.approve_file(session, file_id, actor=account.username)
    session.commit()
    return file_object(record)


@router.get("/v1/files")
def list_files(session: SessionDep, _account: StaffAccount, purpose: str | None = None,
               limit: int = Query(10000, ge=1, le=10000), order: str = "desc", after: str | None = None):
    rows, has_more = file_service.list_files(session, purpose=purpose, order=order, after=after, limit=limit)
    data = [file_object(f) for f in rows]
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/v1/files/{file_id}")
def get_file(file_id: str, session: SessionDep, _account: StaffAccount):
    return file_object(file_service.get_file(session, file_id))


@router.get("/v1/files/{file_id}/content")
def get_file_content(file_id: str, session: SessionDep, settings: SettingsDep, _account: StaffAccount):
    record = file_service.get_file(session, file_id)
    content = file_service.file_content(settings, record)
    media = "text/csv" if record.filename.endswith(".csv") else "application/jsonl"
    return Response(content, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{record.filename}"'})


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, session: SessionDep, settings: SettingsDep, account: StaffAccount):
    record = file_service.delete_file(session, settings, file_id, actor=account.username,
                                      admin=str(account.role) == "admin")
    audit(session, actor=account.username, action="file.deleted", object_type="file", object_id=record.id,
          filename=record.filename)
    session.commit()
    return {"id": record.id, "object": "file", "deleted": True}


# --- fine-tuning jobs -------------------------------------------------------------------------------
@router.post("/v1/fine_tuning/jobs")
def create_job(body: CreateJobRequest, session: SessionDep, settings: SettingsDep, account: StaffAccount):
    request = JobRequest(model=body.model, snapshot_id=body.snapshot_id, training_file_id=body.training_file,
                              validation_file_id=body.validation_file, hyperparameters=body.merged_hyperparameters(),
                              suffix=body.suffix, seed=body.seed, backend=body.backend, metadata=body.metadata,
                              method=body.method_settings())
    job = jobs.create_job(session, settings, request, actor=account.username, admin=str(account.role) == "admin")
    session.commit()
    return job_response(session, job)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, session: SessionDep, _account: StaffAccount, after: str | None = None,
              limit: int = Query(20, ge=1, le=100)):
    """``metadata[key]=value`` query parameters (what the openai client sends for ``metadata={...}``)
    keep only jobs whose metadata holds every pair."""
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    rows, has_more = jobs.list_jobs(session, after=after, limit=limit, metadata=metadata or None)
    return {"object": "list", "data": [job_response(session, j) for j in rows], "has_more": has_more}


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(job_id: str, session: SessionDep, _account: StaffAccount):
    return job_response(session, jobs.get_job(session, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep, account: StaffAccount):
    job = jobs.cancel_job(session, settings, job_id, actor=account.username)
    session.commit()
    return job_response(session, job)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, session: SessionDep, account: StaffAccount):
    """The job answers ``running`` until its training reaches a step boundary, then ``paused``."""
    job = jobs.pause_job(session, job_id, actor=account.username)
    session.commit()
    return job_response(session, job)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, session: SessionDep, account: StaffAccount):
    job = jobs.resume_job(session, job_id, actor=account.username)
    session.commit()
    return job_response(session, job)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def list_events(job_id: str, session: SessionDep, _account: StaffAccount, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)):
    rows, has_more = jobs.list_events(session, job_id, after=after, limit=limit)
    return {"object": "list", "data": [event_object(e) for e in rows], "has_more": has_more}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(job_id: str, session: SessionDep, settings: SettingsDep, _account: StaffAccount):
    found = progress.list_checkpoints(session, settings, job_id)
    data = []
    for item in found:
        metric = item["metric"]
        metrics = {"step": item["step"], "train_loss": metric.train_loss,
                   "train_mean_token_accuracy": metric.train_mean_token_accuracy, "valid_loss": metric.valid_loss,
                   "valid_mean_token_accuracy": metric.valid_mean_token_accuracy,
                   "full_valid_loss": metric.valid_loss,
                   "full_valid_mean_token_accuracy": metric.valid_mean_token_accuracy} if metric else {"step": item["step"]}
        data.append({"id": item["id"], "object": "fine_tuning.job.checkpoint",
                     "created_at": _ts(metric.created_at if metric else item["job"].finished_at),
                     "fine_tuned_model_checkpoint": item["name"], "fine_tuning_job_id": job_id, "metrics": metrics,
                     "step_number": item["step"]})
    return {"object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/v1/fine_tuning/jobs/{job_id}/metrics")
def list_metrics(job_id: str, session: SessionDep, _account: StaffAccount):
    """tuneloop extra: every step's metrics (what result.csv holds), for charts."""
    rows = jobs.list_metrics(session, job_id)
    return {"object": "list", "data": [m.model_dump(exclude={"id", "job_id", "created_at"}) for m in rows]}
