"""What a fine-tuning job may ask for: ``JobRequest`` (OpenAI's create-job body, or the scheduler's
round), the checks of each field that need no database, and the errors that name the field to fix
(OpenAI's error envelope). ``retrain.jobs.service.create_job`` runs these checks, then the ones that
read the database (the parent model, the files' review, the account's queue)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from retrain.trainer.config import DEFAULT_BETA, TrainConfig
from tuneloop.core import errors
from tuneloop.core.settings import Settings


class JobError(errors.InvalidInputError):
    """Bad input (400); ``param`` names the offending field, as OpenAI's error envelope does."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param=param)


class JobNotFoundError(errors.NotFoundError):
    """No such job, file or snapshot (404)."""


class JobConflictError(errors.ConflictError, JobError):
    """The job is not in a state that allows this (409), e.g. cancelling a finished job."""


class JobForbiddenError(errors.ForbiddenError, JobError):
    """The caller may not start this job (403): training on a file nobody else has reviewed."""


class JobLimitError(JobError):
    """Too many jobs waiting for this account (429)."""

    status_code, error_type, code = 429, "rate_limit_error", "too_many_jobs"


@dataclass
class JobRequest:
    """What a job is asked to do, as OpenAI's create-job body says it (``retrain.jobs.openai_routes``),
    or the scheduler's round: continue ``model`` (a version id, name, or the production alias when None)
    on a snapshot or an uploaded file. ``method``: None (supervised), ``{"type": "dpo", "beta": number |
    "auto"}`` on a preference file, or ``{"type": "supervised_then_dpo"}`` on a snapshot
    (``scheduled_method``)."""

    model: str | None = None
    snapshot_id: str | None = None
    training_file_id: str | None = None
    validation_file_id: str | None = None
    hyperparameters: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = None
    backend: str = "local"
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None


def normalize_hyperparameters(values: dict[str, Any] | None) -> dict[str, Any]:
    """Drop OpenAI's ``"auto"`` values (our defaults apply) and validate the rest with TrainConfig."""
    cleaned = {k: v for k, v in (values or {}).items() if v is not None and v != "auto"}
    known = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(cleaned) - set(known))
    if unknown:
        raise JobError(f"unknown hyperparameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                       "hyperparameters")
    for name, value in cleaned.items():
        _check_type(name, value, str(known[name]))
    try:
        TrainConfig.from_dict(cleaned)
    except (TypeError, ValueError) as exc:
        field_name = str(exc).split(" ")[0]
        param = f"hyperparameters.{field_name}" if field_name in known else "hyperparameters"
        raise JobError(str(exc), param) from exc
    return cleaned


_TYPE_CHECKS = {  # TrainConfig's annotations (strings: postponed evaluation) → check, description
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings"),
}


def _check_type(name: str, value: Any, annotation: str) -> None:
    check, description = _TYPE_CHECKS.get(annotation, (lambda v: True, ""))
    if not check(value):
        raise JobError(f"{name} must be {description}, not {value!r}", f"hyperparameters.{name}")


def check_caps(settings: Settings, hyper: dict[str, Any]) -> None:
    for name, cap, setting in (("n_epochs", settings.max_train_epochs, "TUNELOOP_MAX_TRAIN_EPOCHS"),
                               ("min_steps", settings.max_train_steps, "TUNELOOP_MAX_TRAIN_STEPS")):
        if name in hyper and hyper[name] > cap:
            raise JobError(f"{name} is {hyper[name]}; this server allows at most {cap} ({setting})",
                           f"hyperparameters.{name}")


def check_method(method: dict[str, Any] | None, training_file_id: str | None, backend: str) -> dict[str, Any] | None:
    if not method:
        return None

    beta = DEFAULT_BETA if method.get("beta") in (None, "auto") else method["beta"]
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 < beta <= 2:
        raise JobError(f"beta must be a number in (0, 2] or 'auto', not {beta!r}", "method.dpo.hyperparameters.beta")
    if backend != "local":
        raise JobError("DPO runs on the local backend only", "method.type")
    if method.get("type") == "supervised_then_dpo":  # the scheduler's round (settings.retrain_method)
        if training_file_id:
            raise JobError("supervised_then_dpo trains on a dataset snapshot and its corrections' preference "
                           "pairs; leave training_file unset", "training_file")
        return {"type": "supervised_then_dpo", "beta": float(beta)}
    if not training_file_id:
        raise JobError("a DPO job trains on an uploaded preference file; pass training_file", "training_file")
    return {"type": "dpo", "beta": float(beta)}


def scheduled_method(settings: Settings) -> dict[str, Any] | None:
    """The method of a scheduled or train-now round, from ``settings.retrain_method``."""
    return {"type": "supervised_then_dpo"} if settings.retrain_method == "supervised_then_dpo" else None


def check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if not metadata:
        return
    if len(metadata) > 16:
        raise JobError(f"metadata holds {len(metadata)} pairs; at most 16 are allowed", "metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise JobError(f"metadata key {key[:20]!r}… is longer than 64 characters", "metadata")
        if not isinstance(value, str) or len(value) > 512:
            raise JobError(f"metadata[{key!r}] must be a string of at most 512 characters", "metadata")
