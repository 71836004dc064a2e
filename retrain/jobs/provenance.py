"""What a job trained on, recorded on the version it produced: approved corrections (a dataset
snapshot) or an uploaded file, and who vouched for that file (its second-person approver, or the admin
who started the job). Computed here, where jobs and files live; the registry only stores and shows it."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from retrain.models import FineTuneJob, TrainingFile


def training_data(session: Session, job: FineTuneJob) -> dict[str, Any]:
    if not job.training_file_id:
        return {"kind": "snapshot" if job.snapshot_id else "none", "snapshot_id": job.snapshot_id}
    record = session.get(TrainingFile, job.training_file_id)
    approved_by = record.approved_by if record else None
    return {"kind": "uploaded_file", "file_id": job.training_file_id,
            "uploaded_by": record.created_by if record else None, "approved_by": approved_by,
            "job_created_by": job.created_by,
            "reviewed_by": approved_by or f"{job.created_by} (admin, created the job)"}
