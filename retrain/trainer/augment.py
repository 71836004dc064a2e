"""What a round trains on beyond one wording per fact: accepted phrasings and memory-context examples.

A LoRA round on one wording per fact memorises that wording (measured: 33% of held-out rewordings
answered after 40 corrections). Two well-known remedies, both applied here before tokenization:

* **Phrasings** (Physics of Language Models 3.1: one phrasing per fact ~10% on held-out questions,
  several ~96%). Each correction's accepted alternative phrasings (``alternative_questions``,
  exported by ``feedback.export``; missing means none) become one example each, same answer. When a
  correction has two or more, one is *held out*: never trained on, asked by the ``generalises``
  gate. ``split_phrasings`` decides which, the same way in the trainer and in the gates.
* **Memory context** (RAFT: train on retrieved context plus distractors so the model uses it). A
  share of the examples is trained once more with the right verified answer in the system prompt,
  among other approved answers, laid out by serving's own functions
  (``feedback.memory.service.memory_context`` and ``engine.prompting.system_with_memory``); the examples
  without context stay, so the model answers with and without memory.

Examples are ``feedback.examples.TrainingExample``; the copies made here carry ``phrasing`` (0: the
correction's own question, k: its k-th trained phrasing) and ``memory_context`` (True on the copies
with context).
"""

from __future__ import annotations

import hashlib
import random

from engine.prompting import system_with_memory
from feedback.examples import TrainingExample
from feedback.memory.service import MemoryHit, memory_context


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def split_phrasings(key: str, question: str, alternatives: list[str] | None) -> tuple[list[str], str | None]:
    """(phrasings to train on, the held-out one or None) of one correction.

    Blank ones and repeats of the question or of each other are dropped. With two or more left, the
    one with the lowest seeded hash is held out: it does not depend on the order they were accepted
    in, and removing another phrasing never moves it."""
    seen, kept = {_norm(question)}, []
    for alternative in alternatives or []:
        if isinstance(alternative, str) and alternative.strip() and _norm(alternative) not in seen:
            seen.add(_norm(alternative))
            kept.append(alternative.strip())
    if len(kept) < 2:
        return kept, None
    held = min(kept, key=lambda q: hashlib.sha256(f"tuneloop-heldout-v1:{key}:{_norm(q)}".encode()).hexdigest())
    return [q for q in kept if q != held], held


def held_out_phrasing(example: TrainingExample) -> str | None:
    """The phrasing of this example's correction that training never sees (None: fewer than two)."""
    return split_phrasings(example.key, example.question, example.alternative_questions)[1]


def expand_phrasings(examples: list[TrainingExample], *, enabled: bool = True) -> list[TrainingExample]:
    """One example per trained phrasing of each correction (its own question first), same answer.
    ``enabled=False`` keeps one example per correction."""
    out = []
    for example in examples:
        out.append(example.with_marks(phrasing=0, memory_context=False))
        if not enabled or not example.messages or example.messages[-1]["role"] != "user":
            continue
        trained, _held = split_phrasings(example.key, example.question, example.alternative_questions)
        out += [example.asking(question, phrasing=k, memory_context=False)
                for k, question in enumerate(trained, start=1)]
    return out


def add_memory_context(examples: list[TrainingExample], *, fraction: float, max_distractors: int,
                       seed: int) -> list[TrainingExample]:
    """``examples`` (output of ``expand_phrasings``) plus a seeded ``fraction`` of them once more with
    memory context: the example's own verified answer and 0..``max_distractors`` other approved
    answers, in random order, in the system prompt exactly as serving puts them there.

    Only corrections are in correction memory at serving time, so only examples with a
    ``correction_id`` get a copy (uploaded training files and thumbs-up answers do not)."""
    verified: dict[str, tuple[str, str]] = {}  # correction -> (its own question, answer), as memory shows it
    for e in examples:
        if e.phrasing == 0 and e.correction_id and e.messages[-1]["role"] == "user":
            verified.setdefault(e.key, (e.question, e.completion))
    rng = random.Random(seed)
    eligible = [i for i, e in enumerate(examples) if e.correction_id]
    chosen = sorted(rng.sample(eligible, min(len(eligible), round(fraction * len(eligible)))))
    copies = []
    for i in chosen:
        example = examples[i]
        if example.key not in verified or example.messages[0]["role"] != "system":
            continue
        others = [k for k in sorted(verified) if k != example.key and verified[k][1] != verified[example.key][1]]
        picked = rng.sample(others, min(len(others), rng.randint(0, max_distractors)))
        hits = [MemoryHit(k, *verified[k], 1.0) for k in [example.key, *picked]]
        rng.shuffle(hits)
        system = system_with_memory(example.messages[0]["content"], memory_context(hits))
        copies.append(example.under_system(system, memory_context=True))
    return examples + copies


def training_set(examples: list[TrainingExample], *, phrasings: bool, memory_fraction: float, max_distractors: int,
                 seed: int) -> list[TrainingExample]:
    """Everything a round trains on, from the round's examples (see the module docstring). Legacy
    prompt/completion examples train as written: no phrasings, no memory context."""
    chat = [e for e in examples if not e.is_legacy]
    legacy = [e for e in examples if e.is_legacy]
    expanded = expand_phrasings(chat, enabled=phrasings)
    if memory_fraction > 0:
        expanded = add_memory_context(expanded, fraction=memory_fraction, max_distractors=max_distractors, seed=seed)
    return expanded + legacy


def held_out_by_correction(examples: list[TrainingExample]) -> dict[str, str]:
    """{correction: its held-out phrasing} for the examples that have one (recorded in provenance)."""
    out = {}
    for example in (e for e in examples if not e.is_legacy):
        held = held_out_phrasing(example)
        if held is not None:
            out[example.key] = held
    return out
