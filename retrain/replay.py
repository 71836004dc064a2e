"""Which examples a round trains on: everything new since the parent version's snapshot, plus a
seeded sample of the examples the parent already learned (replay, against forgetting them)."""

from __future__ import annotations

import random
from typing import Any


def example_key(example: dict[str, Any]) -> str:
    """A correction's revision identifies an example: a revised answer counts as new."""
    meta = example.get("tuneloop") or example
    return str(meta.get("correction_id") or meta.get("id"))


def select_for_round(current: list[dict[str, Any]], seen_before: set[str] | None, *,
                     replay_fraction: float, seed: int) -> tuple[list[dict[str, Any]], int, int]:
    """(examples to train on, how many are new, how many are replayed). With no parent snapshot
    (``seen_before`` None) every example is new."""
    if not seen_before:
        return list(current), len(current), 0
    new = [e for e in current if example_key(e) not in seen_before]
    old = [e for e in current if example_key(e) in seen_before]
    k = round(replay_fraction * len(old))
    replayed = sorted(random.Random(seed).sample(range(len(old)), k))
    return new + [old[i] for i in replayed], len(new), k
