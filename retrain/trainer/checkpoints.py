"""Saving checkpoints while a local fine-tune runs: the adapter after each epoch, the last three kept
(the layout is the registry's: ``registry.checkpoints``)."""

from __future__ import annotations

import shutil
from typing import Any

from registry.checkpoints import KEEP, checkpoint_dir, checkpoint_steps
from tuneloop.core.settings import Settings


class CheckpointSaver:
    """``RunHooks(on_epoch=CheckpointSaver(...))``: saves the adapter after each epoch, drops all but the last three."""

    def __init__(self, settings: Settings, job_id: str, on_saved=None):
        self.settings, self.job_id, self.on_saved = settings, job_id, on_saved or (lambda epoch, step: None)

    def __call__(self, model: Any, epoch: int, step: int) -> None:
        target = checkpoint_dir(self.settings, self.job_id, step)
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)
        staging.rename(target)
        for old in checkpoint_steps(self.settings, self.job_id)[:-KEEP]:
            shutil.rmtree(checkpoint_dir(self.settings, self.job_id, old), ignore_errors=True)
        self.on_saved(epoch, step)
