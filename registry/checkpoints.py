"""Where checkpoints of a local fine-tune live: the adapter after each epoch, the last three kept (as
OpenAI keeps them), under ``model_store_dir/checkpoints/<job id>/step-<N>/`` (``retrain.trainer.checkpoints``
writes them). Each one answers to the model
name ``<version name>:ckpt-step-<N>`` once the job succeeded (see ``registry.versions.resolve_model``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneloop.core.settings import Settings

KEEP = 3
SEPARATOR = ":ckpt-step-"  # the version name, then this, then the step


def checkpoint_root(settings: Settings, job_id: str) -> Path:
    return settings.model_store_dir / "checkpoints" / job_id


def checkpoint_steps(settings: Settings, job_id: str) -> list[int]:
    """Steps with a saved checkpoint, oldest first."""
    root = checkpoint_root(settings, job_id)
    found = [p.name.removeprefix("step-") for p in root.glob("step-*") if (p / "adapter_config.json").is_file()]
    return sorted(int(s) for s in found if s.isdigit())


def checkpoint_name(version_name: str, step: int) -> str:
    return f"{version_name}{SEPARATOR}{step}"


def remove_checkpoints(settings: Settings, job_id: str) -> None:
    shutil.rmtree(checkpoint_root(settings, job_id), ignore_errors=True)
