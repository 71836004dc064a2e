"""What serving asks of correction memory, and what memory answers: the contract between the chat
floor (``bot``) and the package that implements it (``feedback.memory``), wired in ``tuneloop.app``.

Serving hands memory the conversation and a way to score answers with the weights it serves
(``AnswerScorer``); memory returns a ``MemoryDecision`` with one of five outcomes:

* ``verified``: the reply is an approved answer itself, chosen among the best retrieved ones (or the
  one the customer confirmed after ``clarify``);
* ``clarify``: one approved answer is likely but not certain: the reply asks whether the customer
  means its approved question ("Do you mean ...?"); "yes" gets that answer verified, "no" a handoff.
  A wrong guess costs the customer one turn, never a wrong fact;
* ``handoff``: a question about the company that no approved answer covers with confidence: an honest
  "I've passed this to our team" reply (``memory_handoff_reply``), and the turn tops the review queue;
* ``grounded``: approved answers go into the system prompt and the model answers;
* ``none``: small talk and general questions: the model alone.

Serving never inspects how the decision was made; it streams ``answer`` for the fixed-text outcomes and
puts ``context`` into the system prompt for the third.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from engine.protocol import AnswerScore

VERIFIED, CLARIFY, HANDOFF, GROUNDED, NONE = "verified", "clarify", "handoff", "grounded", "none"
OUTCOMES = (VERIFIED, CLARIFY, HANDOFF, GROUNDED, NONE)
CANNED = (VERIFIED, CLARIFY, HANDOFF)  # outcomes whose reply is a fixed text, not decoded


@dataclass(frozen=True)
class MemoryHit:
    correction_id: str
    question: str
    answer: str
    score: float


@dataclass(frozen=True)
class MemoryDecision:
    """What memory does for one turn: the outcome, the corrections it used and the best scores."""

    outcome: str = NONE
    hits: list[MemoryHit] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)  # the best candidates, as logged on the message
    reason: str = ""
    reply: str = ""  # the handoff text or the clarifying question (outcomes ``handoff``, ``clarify``)

    @property
    def answer(self) -> str:
        """The fixed reply: the approved answer (``verified``), the clarifying question (``clarify``)
        or the handoff text (``handoff``)."""
        if self.outcome == VERIFIED:
            return self.hits[0].answer
        return self.reply if self.outcome in (CLARIFY, HANDOFF) else ""

    @property
    def context(self) -> str:
        """What goes into the system prompt (only for outcome ``grounded``)."""
        return memory_context(self.hits) if self.outcome == GROUNDED and self.hits else ""

    @property
    def correction_ids(self) -> list[str]:
        return [hit.correction_id for hit in self.hits]

    def logged_scores(self) -> list[dict]:
        return list(self.scores)


def memory_context(hits: list[MemoryHit]) -> str:
    """The text added to the system prompt: verified answers the model should rely on. Training builds
    its memory-context examples with this same function (``engine.prompting.system_with_memory``)."""
    lines = ["Verified answers from our support team (use them when they answer the question):"]
    for hit in hits:
        lines.append(f"Q: {hit.question}\nA: {hit.answer}")
    return "\n".join(lines)


class AnswerScorer(Protocol):
    """The served version's weights, scoring candidate answers (``engine.protocol.Engine.score_answers``
    bound to one version). ``system_prompt`` is what serving puts first, so scores are taken on the
    prompt layout the model answers with."""

    version_id: str
    system_prompt: str

    def __call__(self, conversations: list[list[dict[str, str]]], answers: list[str],
                 answer_tokens: int | None = None) -> list[AnswerScore]: ...


class Memory(Protocol):
    """Correction memory as serving uses it."""

    def decide(self, messages: list[dict[str, str]], scorer: AnswerScorer | None = None) -> MemoryDecision:
        """The outcome for the last user message of ``messages``; ``scorer`` (None: retrieval alone)
        lets the served weights vote among the candidates."""
