"""Clarifying questions: between "certain" and "no idea" there is "probably this one; is it?".

When answer selection finds one approved answer likely but not certain, memory does not guess: the reply
asks whether the customer means that answer's approved question (``memory_clarify_reply``). When the
question is about the company but no single answer is likely, the reply offers the few approved
questions the selector still finds plausible as a numbered list (``memory_clarify_choices_reply``), the
"did you mean one of these?" of help centres. The next turn decides: a yes, or a number, gets that
approved answer itself (verified, confirmed by the customer), a no the next few questions retrieval finds
(once), then a handoff. A wrong guess therefore costs a turn or two and never states another correction's
facts: the trade support teams make by hand, and what Rasa calls a two-stage fallback.

The exchange is read back from the conversation itself (the assistant's earlier text), so it works the
same through the web chat, which stores the conversation, and the API, where the client sends it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tuneloop.core.settings import Settings

NONE_OF_THEM = -1  # what ``picked`` returns for "no", "none of them"
_WORD_RE = re.compile(r"[a-z0-9']+")
_CHOICE_LINE_RE = re.compile(r"^\s*(\d+)[.)]\s+(.+?)\s*$")
_YES = {"yes", "y", "yeah", "yep", "yup", "ya", "correct", "exactly", "sure", "right", "indeed", "affirmative",
        "ok", "okay", "please"}
_NO = {"no", "n", "nope", "nah", "not", "wrong", "incorrect", "neither", "none"}
_NUMBERS = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2,
            "3rd": 2, "fourth": 3, "4th": 3, "fifth": 4, "5th": 4, "two": 1, "three": 2, "four": 3, "five": 4}
_MAX_WORDS = 6  # "yes please, that one" is an answer; a longer turn is a question of its own


def clarify_reply(settings: Settings, questions: Sequence[str]) -> str:
    """The clarifying question offering ``questions`` (approved questions): one is asked about with
    ``memory_clarify_reply``, several are listed, numbered, in ``memory_clarify_choices_reply``."""
    if len(questions) == 1:
        return settings.memory_clarify_reply.replace("{question}", questions[0].strip())
    choices = "\n".join(f"{i}. {q.strip()}" for i, q in enumerate(questions, 1))
    return settings.memory_clarify_choices_reply.replace("{choices}", choices)


def offered_questions(settings: Settings, assistant_text: str) -> list[str]:
    """The approved questions an earlier clarifying reply offered, in order; [] when ``assistant_text``
    is not one. A reply is one when it starts with its template's text before the placeholder; a single
    question ends where the text after it begins (its first few characters suffice: a client's
    ``max_tokens`` may have cut the rest), a list is its numbered lines."""
    text = assistant_text.strip()
    before, _ = settings.memory_clarify_choices_reply.split("{choices}")
    if before.strip() and text.startswith(before.strip()):
        lines = [_CHOICE_LINE_RE.match(line) for line in text[len(before.strip()):].splitlines()]
        numbered = [m.group(2) for m in lines if m]
        if numbered:
            return numbered
    before, after = settings.memory_clarify_reply.split("{question}")
    if not text.startswith(before.strip()):
        return []
    rest = text[len(before.strip()):]
    end = rest.find(after[:2]) if after else len(rest)
    question = rest[:end].strip() if end > 0 else ""
    return [question] if question else []


def picked(turn: str, offered: int) -> int | None:
    """Which of ``offered`` questions the turn answering a clarifying reply chose (0-based), or
    ``NONE_OF_THEM`` for a no; None when the turn says something else (a question of its own)."""
    words = _WORD_RE.findall(turn.lower())
    if not words or len(words) > _MAX_WORDS or offered < 1:
        return None
    if words[0] in _NO or "not" in words or "no" in words or "none" in words:
        return NONE_OF_THEM
    numbers = {_NUMBERS[w] for w in words if w in _NUMBERS}
    if len(words) == 1 and words[0] == "one":
        numbers = {0}
    if len(numbers) == 1:
        choice = numbers.pop()
        return choice if choice < offered else None
    if offered == 1 and (words[0] in _YES or (words[0] in {"that", "that's", "thats"} and "it" in words)
                         or "right" in words):
        return 0
    return None


def answers_an_offer(turn: str) -> bool:
    """Whether ``turn`` reads as an answer to a clarifying reply ("yes", "no", "2") rather than a question."""
    return picked(turn, 1) is not None or picked(turn, len(_NUMBERS)) is not None
