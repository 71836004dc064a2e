"""Clarifying questions: between "certain" and "no idea" there is "probably this one; is it?".

When answer selection finds one approved answer likely but not certain, memory does not guess: the reply
asks whether the customer means that answer's approved question (``memory_clarify_reply``). The next
turn decides: a yes gets the approved answer itself (verified, confirmed by the customer), a no a
handoff. A wrong guess therefore costs one turn and never states another correction's facts: the
trade support teams make by hand ("did you mean ...?"), and what Rasa calls a two-stage fallback.

The exchange is read back from the conversation itself (the assistant's earlier text), so it works the
same through the web chat, which stores the conversation, and the API, where the client sends it.
"""

from __future__ import annotations

import re

from tuneloop.core.settings import Settings

YES, NO = "yes", "no"
_WORD_RE = re.compile(r"[a-z']+")
_YES = {"yes", "y", "yeah", "yep", "yup", "ya", "correct", "exactly", "sure", "right", "indeed", "affirmative",
        "ok", "okay", "please"}
_NO = {"no", "n", "nope", "nah", "not", "wrong", "incorrect", "neither"}
_MAX_WORDS = 6  # "yes please, that one" is an answer; a longer turn is a question of its own


def clarify_reply(settings: Settings, question: str) -> str:
    """The clarifying question offering ``question`` (an approved question)."""
    return settings.memory_clarify_reply.replace("{question}", question.strip())


def offered_question(settings: Settings, assistant_text: str) -> str | None:
    """The approved question an earlier clarifying reply offered, or None when ``assistant_text`` is not
    one: it starts with the template's text before ``{question}``, and the question ends where the text
    after it begins (its first few characters suffice: a client's ``max_tokens`` may have cut the rest)."""
    before, after = settings.memory_clarify_reply.split("{question}")
    text = assistant_text.strip()
    if not text.startswith(before.strip()):
        return None
    rest = text[len(before.strip()):]
    end = rest.find(after[:2]) if after else len(rest)
    return rest[:end].strip() or None if end > 0 else None


def confirmation(turn: str) -> str | None:
    """``yes`` or ``no`` when the turn answers a clarifying question, None when it says something else."""
    words = _WORD_RE.findall(turn.lower())
    if not words or len(words) > _MAX_WORDS:
        return None
    if words[0] in _NO or "not" in words or "no" in words:
        return NO
    if words[0] in _YES or (words[0] in {"that", "that's", "thats"} and "it" in words or "right" in words):
        return YES
    return None
