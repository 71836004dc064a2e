"""Checkpoints of a local fine-tune: the adapter after each epoch, the last three kept (as OpenAI
keeps them), under ``model_store_dir/checkpoints/<job id>/step-<N>/``. Each one answers to the model
name ``<version name>:ckpt-step-<N>`` once the job succeeded (see ``bot.versions.resolve_model``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneloop.settings import Settings

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


class CheckpointSaver:
    """``train(..., epoch_callback=CheckpointSaver(...))``: saves the adapter, drops all but the last three."""

    def __init__(self, settings: Settings, job_id: str, on_saved=None):
        self.settings, self.job_id, self.on_saved = settings, job_id, on_saved or (lambda epoch, step: None)

    def __call__(self, model: Any, epoch: int, step: int) -> None:
        target = checkpoint_root(self.settings, self.job_id) / f"step-{step}"
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)
        staging.rename(target)
        for old in checkpoint_steps(self.settings, self.job_id)[:-KEEP]:
            shutil.rmtree(checkpoint_root(self.settings, self.job_id) / f"step-{old}", ignore_errors=True)
        self.on_saved(epoch, step)


def remove_checkpoints(settings: Settings, job_id: str) -> None:
    shutil.rmtree(checkpoint_root(settings, job_id), ignore_errors=True)
