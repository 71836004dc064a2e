"""Correction memory: approved corrections help the next customer before any retraining.

Every approved correction is indexed by its question, its alternative questions and its answer
(``feedback.memory.retrieval``: dense MiniLM plus BM25). Each user turn gets one outcome:

* ``verified``: the latest user turn on its own matches one correction confidently (combined score
  ≥ ``memory_verified_threshold`` and ahead of the runner-up by ``memory_verified_margin``) and does
  not lean on earlier turns: the reply *is* the approved answer, no model involved;
* ``grounded``: one or more corrections score ≥ ``memory_threshold``: their answers go into the
  system prompt and the model answers;
* ``none``: the model answers alone.

A follow-up ("and how much does that cost?") is never verified: after earlier turns, a short turn
that refers back (pronouns, a leading "and"/"what about"), or one whose best match changes when the
previous user turn is read with it, is grounded at most, retrieved with that context.

Each API process refreshes its index by polling a cheap fingerprint of the approved set (count and
latest decision time), so an approval is in effect within seconds everywhere. Gates evaluate
candidates with memory off, so weights and memory can be told apart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from feedback.corrections.models import Correction, CorrectionStatus
from feedback.memory.retrieval import Entry, HybridIndex, Scored
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

VERIFIED, GROUNDED, NONE = "verified", "grounded", "none"
LOGGED_SCORES = 3  # how many of the best-scoring corrections a message records
_REFERRING = {"it", "its", "it's", "that", "that's", "this", "those", "these", "they", "them", "their", "theirs",
              "one", "ones", "he", "she", "him", "her", "same", "else", "too", "also", "instead", "there's"}
_LEADING = {"and", "but", "so", "also", "then", "or", "plus"}
_LEADING_PAIRS = {("what", "about"), ("how", "about"), ("what", "if"), ("and", "if")}
_WORD_RE = re.compile(r"[a-z0-9']+")


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
    scores: list[Scored] = field(default_factory=list)
    reason: str = ""

    @property
    def answer(self) -> str:
        """The verified reply (only for outcome ``verified``)."""
        return self.hits[0].answer if self.outcome == VERIFIED else ""

    @property
    def context(self) -> str:
        """What goes into the system prompt (only for outcome ``grounded``)."""
        return memory_context(self.hits) if self.outcome == GROUNDED and self.hits else ""

    @property
    def correction_ids(self) -> list[str]:
        return [hit.correction_id for hit in self.hits]

    def logged_scores(self) -> list[dict]:
        return [s.as_dict() for s in self.scores[:LOGGED_SCORES]]


def is_follow_up(turn: str, *, has_history: bool, max_words: int) -> bool:
    """A short turn after earlier ones that refers back to them (it, that, and ..., what about ...)."""
    words = _WORD_RE.findall(turn.lower())
    if not has_history or not words or len(words) > max_words:
        return False
    return words[0] in _LEADING or tuple(words[:2]) in _LEADING_PAIRS or any(w in _REFERRING for w in words)


def classify(scores: list[Scored], settings: Settings) -> str:
    """The outcome the scores of a stand-alone turn earn (before the follow-up check)."""
    if not scores:
        return NONE
    best = scores[0].score
    runner_up = scores[1].score if len(scores) > 1 else 0.0
    if (settings.memory_verified_enabled and best >= settings.memory_verified_threshold
            and best - runner_up >= settings.memory_verified_margin):
        return VERIFIED
    if settings.memory_grounded_enabled and best >= settings.memory_threshold:
        return GROUNDED
    return NONE


class CorrectionMemory:
    def __init__(self, settings: Settings, db: Engine, *, refresh_seconds: float = 2.0):
        self.settings = settings
        self.db = db
        self.refresh_seconds = refresh_seconds
        self._fingerprint: tuple | None = None
        self._checked_at = 0.0
        self._index = HybridIndex([])
        self._rows: dict[str, tuple[str, str]] = {}
        self._vectors: dict[str, np.ndarray] = {}  # text -> vector, so refreshes embed only new texts
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()

    def _current_fingerprint(self, session: Session) -> tuple:
        count, latest = session.exec(
            select(func.count(Correction.id), func.max(Correction.decided_at)).where(
                Correction.status == CorrectionStatus.approved
            )
        ).one()
        return count, str(latest)

    def refresh(self, *, force: bool = False) -> None:
        """Rebuild the index if the approved set changed (checked at most every refresh_seconds).

        One rebuild at a time, and a search that arrives while one runs waits for it: measured by
        bench/loop.py, the chats asked together right after an approval were otherwise answered from
        the index without it (7 of the first 8) while one of them re-embedded the new corrections."""
        if not force and time.monotonic() - self._checked_at < self.refresh_seconds:
            return
        with self._refresh_lock:
            if not force and time.monotonic() - self._checked_at < self.refresh_seconds:
                return  # another search refreshed while this one waited
            try:
                self._rebuild_if_changed()
            finally:  # a failed check is retried after refresh_seconds too, not by every search
                self._checked_at = time.monotonic()

    def _rebuild_if_changed(self) -> None:
        with Session(self.db) as session:
            fingerprint = self._current_fingerprint(session)
            if fingerprint == self._fingerprint:
                return
            rows = session.exec(select(Correction).where(Correction.status == CorrectionStatus.approved)
                                .order_by(Correction.id)).all()
            entries = [Entry(c.id, c.question, c.answer, tuple(c.alternative_questions or ())) for c in rows]
        index = HybridIndex(entries, lexical_weight=self.settings.memory_lexical_weight,
                            answer_weight=self.settings.memory_answer_weight, vector_cache=self._vectors)
        with self._lock:
            self._index = index
            self._rows = {e.correction_id: (e.question, e.answer) for e in entries}
            self._fingerprint = fingerprint

    def search(self, query: str) -> list[Scored]:
        self.refresh()
        with self._lock:
            index = self._index
        return index.search(query)

    def _hits(self, scores: list[Scored], limit: int) -> list[MemoryHit]:
        return [MemoryHit(s.correction_id, *self._rows[s.correction_id], s.score)
                for s in scores[:limit] if s.score >= self.settings.memory_threshold]

    def lookup(self, question: str, *, limit: int | None = None) -> list[MemoryHit]:
        """Corrections plausible for ``question`` (score ≥ memory_threshold), best first."""
        if not self.settings.memory_enabled or not question.strip():
            return []
        return self._hits(self.search(question), limit or self.settings.memory_max_hits)

    def context_for(self, question: str) -> tuple[str, list[str]]:
        """What serving adds to the system prompt for ``question``, and which corrections it used."""
        hits = self.lookup(question)
        return (memory_context(hits), [hit.correction_id for hit in hits]) if hits else ("", [])

    def decide(self, messages: list[dict[str, str]]) -> MemoryDecision:
        """The outcome for the last user message of ``messages`` (see the module docstring)."""
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not self.settings.memory_enabled or not users or not users[-1].strip():
            return MemoryDecision()
        turn, previous = users[-1], users[-2] if len(users) > 1 else ""
        alone = self.search(turn)
        outcome, reason = classify(alone, self.settings), ""
        scores = alone
        if previous and (outcome == VERIFIED or is_follow_up(turn, has_history=True,
                                                             max_words=self.settings.memory_followup_max_words)):
            with_context = self.search(f"{previous} {turn}")
            follow_up = is_follow_up(turn, has_history=True, max_words=self.settings.memory_followup_max_words)
            moved = bool(alone and with_context and with_context[0].correction_id != alone[0].correction_id)
            if follow_up or moved:
                reason = "follow-up: leans on earlier turns" if follow_up else "follow-up: context changes the match"
                scores = with_context
                outcome = classify(with_context, self.settings)
                if outcome == VERIFIED:
                    outcome = GROUNDED if self.settings.memory_grounded_enabled else NONE
        if outcome == VERIFIED:
            return MemoryDecision(VERIFIED, self._hits(scores, 1) or [MemoryHit(
                scores[0].correction_id, *self._rows[scores[0].correction_id], scores[0].score)], scores, reason)
        if outcome == GROUNDED:
            return MemoryDecision(GROUNDED, self._hits(scores, self.settings.memory_max_hits), scores, reason)
        return MemoryDecision(NONE, [], scores, reason)


def memory_context(hits: list[MemoryHit]) -> str:
    """The text added to the system prompt: verified answers the model should rely on."""
    lines = ["Verified answers from our support team (use them when they answer the question):"]
    for hit in hits:
        lines.append(f"Q: {hit.question}\nA: {hit.answer}")
    return "\n".join(lines)
