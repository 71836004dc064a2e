"""Does an answer say what the reference says? The gates' one notion of "correct".

An answer matches its reference when both hold:

* its embedding (the bundled all-MiniLM-L6-v2) has cosine similarity ≥ ``threshold`` with the
  reference's (``settings.gate_similarity_threshold``, default 0.75), and
* every key fact of the reference occurs in it as words of its own (``states``: "No" is not in "not"),
  case-insensitively, after numbers are normalised on both sides ("1,000" = "1000", "30.00" = "30", "seven" = "7", "thirty" = "30", "$ 30" = "$30").

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


def states(normalised_text: str, fact: str) -> bool:
    """Whether a normalised text states ``fact`` as words of its own: "No" is not in "not", "7 days" is
    not in "17 days"; a plural ("tents" for "tent") counts."""
    key = normalise(fact)
    return bool(key) and re.search(r"(?<!\w)" + re.escape(key) + r"(?:e?s)?(?!\w)", normalised_text) is not None


def missing_key_facts(answer: str, key_facts: Sequence[str]) -> list[str]:
    """The key facts that ``answer`` does not contain (empty when all are there)."""
    normalised = normalise(answer)
    return [fact for fact in key_facts if normalise(fact) and not states(normalised, fact)]


_STATED_RE = re.compile(  # a number with its unit or currency, an e-mail address, a phone number, a web address
    r"[$€£]\d[\d.]*|\d[\d.]*\s*(?:%|percent|pounds?|lbs?|kg|gb|mb|tb|minutes?|hours?|days?|weeks?|months?|years?"
    r"|business days?|am|pm|p\.m\.|a\.m\.)?|[\w.+-]+@[\w-]+\.[\w.]+|\+?\d[\d\s().-]{6,}\d|(?:https?://|www\.)\S+")


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def stated_details(text: str) -> set[str]:
    """The checkable details a reply states: numbers (with their unit or currency), e-mail addresses,
    phone numbers, web addresses; normalised as key facts are."""
    return {_SPACES_RE.sub(" ", m.group(0)).strip().rstrip(".") for m in _STATED_RE.finditer(normalise(text))}


def wrong_facts(reply: str, right_answer: str, other_key_facts: Sequence[str]) -> list[str]:
    """What ``reply`` states that is wrong for a question whose approved answer is ``right_answer``:
    a key fact of another correction that the right answer does not hold (facts mixed between
    corrections), or a number, price, duration or contact the right answer does not contain (an
    invented detail). Empty for a reply that is right, or that states nothing checkable (a handoff)."""
    right = normalise(right_answer)
    said = normalise(reply)
    mixed = [fact for fact in other_key_facts if states(said, fact) and not states(right, fact)]
    invented = sorted(d for d in stated_details(reply)
                      if not _holds(right, d) and not any(d in normalise(fact) for fact in mixed))
    return list(dict.fromkeys(mixed + invented))


def _holds(right: str, detail: str) -> bool:
    """Whether the (normalised) right answer states ``detail``: verbatim, or for a number with another
    unit wording ("7 days" for "7 business days"), the same number."""
    if detail in right:
        return True
    number = _NUMBER_RE.search(detail)
    return "@" not in detail and "/" not in detail and number is not None \
        and number.group(0) in _NUMBER_RE.findall(right)


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
