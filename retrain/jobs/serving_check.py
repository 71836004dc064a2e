"""The stop rule's last word: a round's new examples asked through what will serve them.

The trainer stops once every new example's answer is predicted right, teacher-forced, in its latest
passes (``retrain.trainer.learned``). The learned gate asks differently: greedy decoding through the
engine production serves with, on the version's own artifact (llama.cpp on its quantised GGUF by
default), where a token won by a small margin can lose to rounding, and one wrong token sends the rest
of the answer elsewhere. So before a round ends its new examples are asked exactly as the gate asks
them (``retrain.gates.asking``, memory off, judged by ``retrain.gates.matching``), and the ones
answered wrong are trained further, from the round's adapter, until they are learned with a
probability of at least ``RETRAIN_MIN_PROB`` per token or ``serving_retrain_steps`` run out. The
re-trained adapter replaces the round's (the gates then ask again, as always). Supervised rounds only:
a DPO pass optimises preferences, not the answer's tokens.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.protocol import VersionSpec
from engine.transformers_model import LoadedModel
from feedback.examples import TrainingExample
from retrain.gates.asking import answer_all, engine_used
from retrain.gates.items import example_item
from retrain.gates.matching import match_answers
from retrain.jobs.rounds import RoundPlan
from retrain.trainer.interface import RunHooks, RunPaths
from retrain.trainer.train import train
from tuneloop.core.settings import Settings

RETRAIN_MIN_PROB = 0.9  # per answer token, for a re-trained example to count as learned


@dataclass
class ServingCheck:
    """What the check found and did, for the job's events and metrics."""

    engine: str
    asked: int
    wrong: list[str]  # the names of the new examples answered wrong
    retrained_steps: int = 0
    trained_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "asked": self.asked, "wrong": len(self.wrong),
                "wrong_examples": self.wrong[:20], "retrained_steps": self.retrained_steps}

    def describe(self) -> str:
        asked = f"Asked the {self.asked} new examples through {self.engine} as production will serve them"
        if not self.wrong:
            return f"{asked}: every one answered right"
        if not self.retrained_steps:
            return f"{asked}: {len(self.wrong)} answered wrong, not re-trained (serving_retrain_steps is 0)"
        return (f"{asked}: {len(self.wrong)} answered wrong and re-trained for {self.retrained_steps} more steps "
                "(the gates ask them again)")


def answered_wrong(settings: Settings, spec: VersionSpec,
                   examples: list[TrainingExample]) -> tuple[list[TrainingExample], str]:
    """The examples ``spec`` answers wrong when asked as the learned gate asks, and the engine that
    answered (``llamacpp`` or ``transformers``)."""
    loaded = LoadedModel.load(spec, device=settings.device, dtype=settings.dtype)
    items = [example_item("learned", e) for e in examples]
    answers = answer_all(loaded, items, settings)
    engine = engine_used(loaded, settings)["engine"]
    matches = match_answers(answers, [i.reference for i in items], [i.key_facts for i in items],
                            threshold=settings.gate_similarity_threshold)
    return [e for e, m in zip(examples, matches) if not m.passed], engine


def check_and_retrain(plan: RoundPlan, hooks: RunHooks) -> ServingCheck | None:
    """Ask the plan's new examples through the serving engine on the round's adapter; re-train those
    answered wrong (``hooks`` report its steps) and put the result in the adapter's place. None when the
    round has nothing to check."""
    config, new_examples = plan.config, plan.new_examples
    if not config.serving_check or not new_examples:
        return None
    adapter_dir = plan.adapter_dir
    wrong, engine = answered_wrong(plan.settings, VersionSpec(f"check-{plan.job.id}", plan.base_dir, adapter_dir),
                                   new_examples)
    check = ServingCheck(engine, len(new_examples), [e.name for e in wrong])
    if not wrong or not config.serving_retrain_steps:
        return check
    again = dataclasses.replace(config, n_epochs=config.learned_checks, min_steps=config.serving_retrain_steps,
                                stop_when_learned=True, learned_min_prob=max(config.learned_min_prob, RETRAIN_MIN_PROB),
                                serving_check=False, memory_examples_fraction=0.0, warmup_fraction=0.0)
    retrained = adapter_dir.with_name(f"{adapter_dir.name}.retrained")
    shutil.rmtree(retrained, ignore_errors=True)  # a crashed earlier try
    result = train(again, wrong, [], paths=RunPaths(plan.base_dir, adapter_dir, retrained), hooks=hooks)
    _replace_dir(adapter_dir, retrained)
    check.retrained_steps, check.trained_tokens = result.steps, result.trained_tokens
    return check


def _replace_dir(target: Path, replacement: Path) -> None:
    """Put ``replacement`` where ``target`` is: the old directory moves aside first and is removed last,
    so a crash leaves one of the two complete (the job then fails and production is untouched)."""
    aside = target.with_name(f"{target.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    target.rename(aside)
    replacement.rename(target)
    shutil.rmtree(aside, ignore_errors=True)
