"""Pausing a run at a step boundary and resuming it later from where it stopped (OpenAI's
``fine_tuning.jobs.pause`` / ``resume``).

At each step boundary the run asks ``should_pause()``; when it says yes, ``PausePoint.pause`` writes a
resumable checkpoint into ``resume_dir`` and raises ``TrainingPaused``. The checkpoint is the adapter
(peft's files, usable as they are) and ``trainer_state.pt``: optimizer and LR scheduler state, the
position (epoch, step, index of the next step within the epoch), the RNG state and the run's own
bookkeeping (metrics rows, train-until-learned counters). It is written into a staging directory that
replaces the previous one by renames, so a crash mid-write leaves the last complete checkpoint.

On resume the run is built exactly as before (same data, same parent: the KL anchors and the DPO
reference are the parent's answers, computed before the checkpoint's weights are loaded), then
``PausePoint.restore`` loads the weights and the state, and the loop continues at the saved position:
the same total steps, the same batches, and on a CPU the same numbers as a run never paused.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retrain.trainer.budget import BatchBudget

STATE_FILE = "trainer_state.pt"


class TrainingPaused(Exception):
    """``should_pause()`` returned True; a resumable checkpoint was written at ``step``."""

    def __init__(self, step: int, epoch: int):
        super().__init__(f"paused at step {step} (epoch {epoch})")
        self.step, self.epoch = step, epoch


def has_resume_state(resume_dir: Path | None) -> bool:
    return resume_dir is not None and (Path(resume_dir) / STATE_FILE).is_file()


def paused_step(resume_dir: Path | None) -> int | None:
    """The step a paused run stopped at (None: nothing to resume from)."""
    return PausePoint(resume_dir, None).saved_step()


class PausePoint:
    """A run's pause and resume. The run gives ``model``, ``optimizer``, ``scheduler``, ``step``,
    ``total_steps`` and ``resumable_state()`` / ``restore_state(state)`` for its own bookkeeping."""

    def __init__(self, resume_dir: Path | None, should_pause: Callable[[], bool] | None):
        self.resume_dir = Path(resume_dir) if resume_dir is not None else None
        self.should_pause = should_pause or (lambda: False)

    def check(self, run: Any, epoch: int, position: int) -> None:
        """At a step boundary: the next step is ``position`` within ``epoch`` (0-based)."""
        if self.resume_dir is None or run.step == 0 or not self.should_pause():
            return
        self._write(run, {"epoch": epoch, "position": position, "step": run.step, "total_steps": run.total_steps,
                          "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                          "rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                          "run": run.resumable_state()})
        raise TrainingPaused(run.step, epoch + 1)

    def _write(self, run: Any, state: dict[str, Any]) -> None:
        target = self.resume_dir
        staging, old = target.with_name(f".{target.name}.partial"), target.with_name(f".{target.name}.old")
        shutil.rmtree(staging, ignore_errors=True)
        run.model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)
        torch.save(state, staging / STATE_FILE)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    def load_weights(self, model: Any) -> int | None:
        """Put the paused run's adapter weights into ``model``; the step it paused at, or None (a fresh run)."""
        step = self.saved_step()
        if step is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(self.resume_dir / "adapter_model.safetensors"))
        return step

    def saved_budget(self) -> Any:
        """The paused run's token budget (``retrain.trainer.budget.BatchBudget``), so a resumed run
        batches exactly as it did whatever memory is free now; None for a fresh run."""
        saved = self._state()["run"].get("batch_budget") if has_resume_state(self.resume_dir) else None
        if not saved:
            return None
        return BatchBudget(saved["batch_tokens"], saved["gradient_checkpointing"], "as before the pause")

    def saved_step(self) -> int | None:
        return int(self._state()["step"]) if has_resume_state(self.resume_dir) else None

    def restore(self, run: Any) -> tuple[int, int]:
        """Optimizer, scheduler, RNG and bookkeeping of the paused run; (epoch, position) to continue at,
        (0, 0) for a fresh run."""
        if not has_resume_state(self.resume_dir):
            return 0, 0
        state = self._state()
        if state["total_steps"] != run.total_steps:
            raise ValueError(f"the paused run had {state['total_steps']} steps, this one {run.total_steps}: the "
                             "training data changed since the pause; cancel the job and start a new one")
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        run.step = state["step"]
        run.restore_state(state["run"])
        return state["epoch"], state["position"]

    def _state(self) -> dict[str, Any]:
        return torch.load(self.resume_dir / STATE_FILE, weights_only=False)
