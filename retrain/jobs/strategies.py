"""Running a planned round: ``run_round(plan, reporter, controls)``, one small strategy per method.

* ``supervised``: LoRA on the round's examples until learned (``retrain.trainer.train``), then the new
  examples asked through the serving engine and those answered wrong re-trained
  (``retrain.jobs.serving_check``);
* ``supervised_then_dpo``: the same supervised pass into the job's checkpoint directory, then DPO on the
  snapshot's preference pairs from it, into the job's adapter (one adapter, steps numbered on);
* ``dpo``: DPO on an uploaded preference file, from the parent;
* ``hosted``: the provider trains (``retrain.jobs.hosted``).

A strategy decides; the ``JobReporter`` writes what it decided. Each returns the result the worker
registers a version from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain.jobs import progress
from retrain.jobs.hosted import run_hosted_job
from retrain.jobs.reporting import JobReporter
from retrain.jobs.rounds import RoundPlan
from retrain.jobs.serving_check import check_and_retrain
from retrain.trainer.checkpoints import CheckpointSaver
from retrain.trainer.config import dpo_config
from retrain.trainer.dpo import train_dpo
from retrain.trainer.interface import RunHooks, RunPaths
from retrain.trainer.pausing import TrainingPaused
from retrain.trainer.train import expand_for_training, train

Result = dict[str, Any]


@dataclass
class Controls:
    """How the job is steered from outside while it runs: cancelled (the worker is gone) or paused."""

    should_cancel: Callable[[], bool]
    should_pause: Callable[[], bool]

    def hooks(self, resume_dir: Path | None = None, **rest: Any) -> RunHooks:
        return RunHooks(should_cancel=self.should_cancel, should_pause=self.should_pause, resume_dir=resume_dir,
                        **rest)


def run_round(plan: RoundPlan, reporter: JobReporter, controls: Controls) -> Result:
    """Run ``plan`` by its method. A local round's pause checkpoints and intermediate adapter are
    removed once its adapter is written; a pause raises ``TrainingPaused`` and keeps them."""
    if plan.method == "hosted":
        return run_hosted_job(plan.settings, reporter.db, plan.job.id, should_cancel=controls.should_cancel)
    result = (_dpo_file if plan.method == "dpo" else _supervised)(plan, reporter, controls)
    for name in ("resume", "resume-dpo", "supervised"):  # the per-epoch checkpoints stay
        shutil.rmtree(plan.checkpoints / name, ignore_errors=True)
    return result


def _supervised(plan: RoundPlan, reporter: JobReporter, controls: Controls) -> Result:
    """``supervised`` and ``supervised_then_dpo``."""
    config, then_dpo = plan.config, plan.method == "supervised_then_dpo"
    effective, reasons = progress.planned_hyperparameters(config, len(expand_for_training(config, plan.train)))
    messages = [plan.describe(), *reasons]
    if then_dpo:
        messages.append(f"Then DPO on {len(plan.pairs)} preference pairs of {plan.job.snapshot_id}'s corrections (the "
                        "corrected answer against its approved correction)" if plan.pairs else
                        "no preference pairs: DPO skipped (no correction in the snapshot corrects an answer)")
    reporter.events(messages)
    # a job resumed after its supervised pass keeps what that pass ran (it may have stopped once learned)
    reporter.effective_hyperparameters(plan.job.effective_hyperparameters or effective)
    supervised_dir = plan.checkpoints / "supervised" if plan.pairs else plan.adapter_dir
    metrics, tokens = _supervised_pass(plan, reporter, controls, supervised_dir, effective)
    if plan.pairs:
        dpo = _dpo_pass(plan, reporter, controls, supervised_dir, metrics["steps"])
        metrics, tokens = {**metrics, "method": "supervised_then_dpo", "dpo": dpo.metrics}, tokens + dpo.trained_tokens
    else:
        metrics, tokens = _check_through_serving(plan, reporter, controls, metrics, tokens)
    legacy = bool(plan.train) and all(e.is_legacy for e in plan.train)
    return {"adapter_path": plan.relative_adapter, "metrics": metrics, "trained_tokens": tokens,
            "prompt_format": "legacy" if legacy else "chat"}


def _supervised_pass(plan: RoundPlan, reporter: JobReporter, controls: Controls, output_dir: Path,
                     effective: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The supervised run (metrics, trained tokens); a job resumed in its DPO pass finds it done."""
    if (output_dir / "training_config.json").is_file():
        metrics = json.loads((output_dir / "training_config.json").read_text())["metrics"]
        return metrics, metrics["trained_tokens"]
    resume_dir = plan.checkpoints / "resume"
    reporter.resuming(resume_dir)
    hooks = controls.hooks(resume_dir, progress=reporter.steps(), provenance=plan.provenance(),
                           on_epoch=CheckpointSaver(plan.settings, plan.job.id, reporter.checkpoint_saved))
    result = train(plan.config, plan.train, plan.valid, paths=RunPaths(plan.base_dir, plan.parent_adapter_dir, output_dir),
                   hooks=hooks, new_keys=plan.new_keys)
    reporter.event(_stop_message(result.metrics), {
        k: result.metrics.get(k) for k in ("learned_at_step", "stopped_at_step", "max_steps", "stop_reason")})
    ran = {"n_epochs": result.metrics.get("n_epochs"), "total_steps": result.steps}
    if any(ran[k] is not None and ran[k] != effective[k] for k in ran):  # stopped once learned, or examples skipped
        reporter.event(f"Ran {ran['n_epochs']} epochs, {ran['total_steps']} steps on {result.metrics.get('n_train')} "
                       "examples")
        reporter.effective_hyperparameters({**effective, **ran})
    return result.metrics, result.trained_tokens


def _check_through_serving(plan: RoundPlan, reporter: JobReporter, controls: Controls, metrics: dict[str, Any],
                           tokens: int) -> tuple[dict[str, Any], int]:
    """The new examples asked through the serving engine, those answered wrong re-trained
    (``retrain.jobs.serving_check``); the job's events say how many. Rounds of a snapshot only: those
    are what the learned gate asks; a job on an uploaded file trains the epochs it asked for."""
    if plan.new_keys is None:
        return metrics, tokens
    hooks = RunHooks(progress=reporter.steps(offset=metrics["steps"]), should_cancel=controls.should_cancel,
                     provenance=plan.provenance(first_pass_metrics=metrics))
    check = check_and_retrain(plan, hooks)
    if check is None:
        return metrics, tokens
    reporter.event(check.describe(), check.as_dict())
    return ({**metrics, "serving_check": check.as_dict(), "steps": metrics["steps"] + check.retrained_steps},
            tokens + check.trained_tokens)


def _dpo_pass(plan: RoundPlan, reporter: JobReporter, controls: Controls, supervised_dir: Path, offset: int):
    """The DPO pass of a supervised_then_dpo round: continues from (and is referenced to) the supervised
    adapter of this job; its steps are numbered on after the supervised ones."""
    config = dpo_config(plan.config, plan.job.hyperparameters)
    resume_dir = plan.checkpoints / "resume-dpo"
    reporter.event(f"DPO on {len(plan.pairs)} preference pairs (beta={plan.beta}, learning rate "
                   f"{config.dpo_learning_rate:g}), reference model: this job's supervised result")
    reporter.resuming(resume_dir, offset)
    hooks = controls.hooks(resume_dir, progress=reporter.steps(offset), provenance=plan.provenance(supervised_steps=offset))
    try:
        return train_dpo(config, plan.beta, plan.pairs, paths=RunPaths(plan.base_dir, supervised_dir, plan.adapter_dir),
                         hooks=hooks)
    except TrainingPaused as paused:
        raise TrainingPaused(paused.step + offset, paused.epoch) from None


def _dpo_file(plan: RoundPlan, reporter: JobReporter, controls: Controls) -> Result:
    """DPO on an uploaded preference file, referenced to the parent."""
    config, rows = plan.config, plan.pairs
    effective, reasons = progress.planned_hyperparameters(config, len(rows), accumulate=False)
    reporter.events([f"DPO on {len(rows)} preference pairs (beta={plan.beta}), reference model {plan.parent_id}, "
                     "continuing from its " + ("adapter" if plan.parent_adapter_dir else "base (fresh LoRA)"), *reasons])
    reporter.effective_hyperparameters({**effective, "beta": plan.beta, "learning_rate": config.dpo_learning_rate})
    resume_dir = plan.checkpoints / "resume"
    reporter.resuming(resume_dir)
    result = train_dpo(config, plan.beta, rows, paths=RunPaths(plan.base_dir, plan.parent_adapter_dir, plan.adapter_dir),
                       hooks=controls.hooks(resume_dir, progress=reporter.steps(), provenance=plan.provenance()))
    return {"adapter_path": plan.relative_adapter, "metrics": result.metrics, "trained_tokens": result.trained_tokens,
            "prompt_format": "chat"}


def _stop_message(metrics: dict[str, Any]) -> str:
    if metrics.get("stop_reason") == "learned":
        return (f"Stopped at step {metrics['stopped_at_step']} of at most {metrics['max_steps']}: every new example's "
                "answer was predicted right in its latest passes in a row (learned_checks)")
    learned = metrics.get("learned_at_step")
    return (f"Trained to the cap of {metrics.get('stopped_at_step')} steps; "
            + (f"every new example was learned at step {learned}" if learned else
               "some new examples' answers were still not predicted right token for token"))
