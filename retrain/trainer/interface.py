"""What a training run is given besides its config and examples: where it starts from and writes to
(``RunPaths``), and how it talks to whoever started it (``RunHooks``). Supervised and DPO runs take the
same two, so a caller (a job's round, the CLI, a benchmark) builds them once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ProgressCallback = Callable[[dict[str, Any]], None]


class TrainingCancelled(Exception):
    """``should_cancel()`` returned True; nothing was written."""


@dataclass(frozen=True)
class RunPaths:
    """The base model, the parent's adapter to continue from (None: a fresh LoRA) and the directory the
    new adapter is written to (atomically; it must not exist)."""

    base_dir: Path
    parent_adapter_dir: Path | None
    output_dir: Path

    def __post_init__(self) -> None:  # callers may pass strings
        object.__setattr__(self, "base_dir", Path(self.base_dir))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.parent_adapter_dir is not None:
            object.__setattr__(self, "parent_adapter_dir", Path(self.parent_adapter_dir))


@dataclass
class RunHooks:
    """How a run reports and is steered, every part optional.

    ``progress(row)`` hears each optimizer step's metrics; ``should_cancel()`` is asked before every
    forward pass; ``should_pause()`` at each step boundary, after which a resumable checkpoint is written
    to ``resume_dir`` (``retrain.trainer.pausing``); ``on_epoch(model, epoch, step)`` runs after each
    epoch (a job saves checkpoints there); ``provenance`` is recorded in training_config.json."""

    progress: ProgressCallback | None = None
    should_cancel: Callable[[], bool] | None = None
    should_pause: Callable[[], bool] | None = None
    resume_dir: Path | None = None
    on_epoch: Callable[[Any, int, int], None] | None = None
    provenance: dict[str, Any] | None = None

    def report(self, row: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(row)

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())
