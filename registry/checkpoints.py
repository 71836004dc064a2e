"""Checkpoints of a local fine-tune, the one place that knows where they live and what they are called:
the adapter at a step, the last three kept (as OpenAI keeps them), under
``model_store_dir/checkpoints/<job id>/step-<N>/`` (``retrain.trainer.checkpoints`` writes them). Each one
answers to the model name ``<version name>:ckpt-step-<N>`` (``checkpoint_name``) once the job succeeded
(``registry.versions.resolve_model`` serves it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from registry.models import ModelVersion
from tuneloop.core.settings import Settings

KEEP = 3
CHECKPOINT_MARK = ":ckpt-step-"  # the version name, then this, then the step


def checkpoint_root(settings: Settings, job_id: str) -> Path:
    return settings.model_store_dir / "checkpoints" / job_id


def checkpoint_dir(settings: Settings, job_id: str, step: int) -> Path:
    return checkpoint_root(settings, job_id) / f"step-{step}"


def checkpoint_steps(settings: Settings, job_id: str) -> list[int]:
    """Steps with a saved checkpoint, oldest first."""
    root = checkpoint_root(settings, job_id)
    found = [p.name.removeprefix("step-") for p in root.glob("step-*") if (p / "adapter_config.json").is_file()]
    return sorted(int(s) for s in found if s.isdigit())


def checkpoint_name(version_name: str, step: int) -> str:
    return f"{version_name}{CHECKPOINT_MARK}{step}"


def checkpoint_adapters(settings: Settings, version: ModelVersion) -> list[tuple[int, Path]]:
    """(step, adapter directory) of each checkpoint kept for the job that made ``version``, oldest first."""
    if not version.job_id or not version.adapter_path:
        return []
    steps = checkpoint_steps(settings, version.job_id)
    return [(step, checkpoint_dir(settings, version.job_id, step)) for step in steps]


def remove_checkpoints(settings: Settings, job_id: str) -> None:
    shutil.rmtree(checkpoint_root(settings, job_id), ignore_errors=True)
