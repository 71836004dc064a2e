"""Which examples a round trains on: everything new since the parent version's snapshot, plus a
seeded sample of the examples the parent already learned (replay, against forgetting them)."""

from __future__ import annotations

import random

from feedback.examples import TrainingExample


def select_for_round(current: list[TrainingExample], seen_before: set[str] | None, *,
                     replay_fraction: float, seed: int) -> tuple[list[TrainingExample], int, int]:
    """(examples to train on, how many are new, how many are replayed). An example is known by its
    ``key`` (a correction's revision: a revised answer counts as new). With no parent snapshot
    (``seen_before`` None) every example is new."""
    if not seen_before:
        return list(current), len(current), 0
    new = [e for e in current if e.key not in seen_before]
    old = [e for e in current if e.key in seen_before]
    k = round(replay_fraction * len(old))
    replayed = sorted(random.Random(seed).sample(range(len(old)), k))
    return new + [old[i] for i in replayed], len(new), k
