"""Does an answer say what the reference says? The gates' one notion of "correct".

An answer matches its reference when both hold:

* its embedding (the bundled all-MiniLM-L6-v2) has cosine similarity ≥ ``threshold`` with the
  reference's (``settings.gate_similarity_threshold``, default 0.75), and
* every key fact of the reference occurs in it, case-insensitively, after numbers are normalised on
  both sides ("1,000" = "1000", "30.00" = "30", "seven" = "7", "thirty" = "30", "$ 30" = "$30").

A reference without key facts is judged on similarity alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from engine.embeddings import embed

_WORD_NUMBERS = {
    w: str(i) for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
} | {w: str(10 * i) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), start=3)}
_WORD_RE = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TRAILING_ZEROS_RE = re.compile(r"(\d+)\.0+\b")
_CURRENCY_SPACE_RE = re.compile(r"([$€£])\s+(?=\d)")
_SPACES_RE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace and write numbers one way, for key-fact lookup."""
    text = text.lower()
    text = _WORD_RE.sub(lambda m: _WORD_NUMBERS[m.group(1)], text)
    text = _THOUSANDS_RE.sub("", text)
    text = _TRAILING_ZEROS_RE.sub(r"\1", text)
    text = _CURRENCY_SPACE_RE.sub(r"\1", text)
    return _SPACES_RE.sub(" ", text).strip()


def missing_key_facts(answer: str, key_facts: Sequence[str]) -> list[str]:
    """The key facts that ``answer`` does not contain (empty when all are there)."""
    normalised = normalise(answer)
    return [fact for fact in key_facts if normalise(fact) and normalise(fact) not in normalised]


@dataclass
class MatchResult:
    similarity: float
    missing_facts: list[str] = field(default_factory=list)
    passed: bool = False

    def as_dict(self) -> dict:
        return {"similarity": round(self.similarity, 4), "missing_facts": self.missing_facts, "passed": self.passed}


def match_answers(
    answers: Sequence[str], references: Sequence[str], key_facts: Sequence[Sequence[str]], *, threshold: float
) -> list[MatchResult]:
    """Judge ``answers[i]`` against ``references[i]`` and ``key_facts[i]``, embedding all texts in one
    batch."""
    if not answers:
        return []
    vectors = embed([*answers, *references])
    n = len(answers)
    sims = (vectors[:n] * vectors[n:]).sum(axis=1)
    results = []
    for answer, sim, facts in zip(answers, sims, key_facts):
        missing = missing_key_facts(answer, facts)
        results.append(MatchResult(float(sim), missing, bool(sim >= threshold and not missing)))
    return results
