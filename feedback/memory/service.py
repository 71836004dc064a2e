"""Correction memory: approved corrections help the next customer before any retraining.

Every approved correction is indexed by its question, its alternative questions and its answer
(``feedback.memory.retrieval``: dense MiniLM plus BM25). Each user turn gets one of the outcomes that
``bot.memory`` declares:

* a turn that *is* an approved question or accepted phrasing (case, spacing and trailing punctuation
  aside) of exactly one correction is ``verified`` with that correction's answer: staff already said
  what answers it, so no score can overrule them (a wording two corrections share is left to selection);
* otherwise the best ``memory_candidates`` retrieved corrections are **candidates**; the served model scores
  each approved answer given the conversation (``feedback.memory.selection``: pointwise mutual
  information against a neutral question) and a logistic selector turns retrieval and model scores
  into the probability that a candidate is the right answer;
* ``verified``: the best candidate's probability is ≥ ``memory_verified_probability`` and the turn
  stands on its own: the reply *is* that approved answer, no decoding;
* ``clarify``: the best candidate's probability is ≥ ``memory_clarify_probability``: the reply asks
  whether the customer means its approved question (``bot.clarify``); the customer's yes
  makes the next turn ``verified`` with it; when none is that likely but a
  few are at least ``memory_clarify_choice_probability`` and the question is about the company, the
  reply lists up to ``memory_clarify_choices`` of their approved questions and the customer picks one
  by its number (verified); a no to either lists the next few questions retrieval finds for the
  customer's question (score ≥ ``memory_clarify_after_no_score``), once, and a no to that, or nothing
  found, is a ``handoff``;
* otherwise, a question about the company (``feedback.memory.topic``: nearer to what customers ask
  companies than to small talk and general questions, by ``memory_topic_threshold``) is ``grounded`` (approved answers in the prompt, only where ``memory_grounded_enabled``) or
  ``handoff``: an honest "I've passed this to our team" reply, and the turn tops the review queue;
* ``none``: small talk and general questions, the model alone.

A follow-up ("and how much does that cost?") is never verified: after earlier turns, a short turn
that refers back (pronouns, a leading "and"/"what about"), or one whose best match changes when the
previous user turn is read with it, is retrieved with that context and handed off or grounded.

Each API process refreshes its index by polling a cheap fingerprint of the approved set (count and
latest decision time), so an approval is in effect within seconds everywhere. Gates evaluate
candidates with memory off, so weights and memory can be told apart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import numpy as np
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.memory import (CLARIFY, GROUNDED, HANDOFF, NONE, VERIFIED, AnswerScorer, MemoryDecision, MemoryHit,
                        memory_context)
from feedback.corrections.models import Correction, CorrectionStatus
from feedback.corrections.service import normalized_question
from bot.clarify import NONE_OF_THEM, answers_an_offer, clarify_reply, offered_questions, picked
from feedback.memory.retrieval import Entry, HybridIndex, Scored
from engine.embeddings import embed
from feedback.memory.topic import REFERENCE
from feedback.memory.selection import NEUTRAL_QUESTION, Candidate, SelectorPair, candidates_from, load_selectors
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["CLARIFY", "CorrectionMemory", "GROUNDED", "HANDOFF", "MemoryDecision", "MemoryHit", "NONE", "VERIFIED",
           "is_follow_up", "memory_context"]
LOGGED_SCORES = 3  # how many of the best-scoring corrections a message records
_REFERRING = {"it", "its", "it's", "that", "that's", "this", "those", "these", "they", "them", "their", "theirs",
              "one", "ones", "he", "she", "him", "her", "same", "else", "too", "also", "instead", "there's"}
_LEADING = {"and", "but", "so", "also", "then", "or", "plus"}
_LEADING_PAIRS = {("what", "about"), ("how", "about"), ("what", "if"), ("and", "if")}
_WORD_RE = re.compile(r"[a-z0-9']+")


def is_follow_up(turn: str, *, has_history: bool, max_words: int) -> bool:
    """A short turn after earlier ones that refers back to them (it, that, and ..., what about ...)."""
    words = _WORD_RE.findall(turn.lower())
    if not has_history or not words or len(words) > max_words:
        return False
    return words[0] in _LEADING or tuple(words[:2]) in _LEADING_PAIRS or any(w in _REFERRING for w in words)


def exact_wordings(entries: list[Entry]) -> dict[str, str | None]:
    """Each approved wording (question and accepted phrasings), normalised, to its correction; a
    wording two corrections share maps to None: which of them answers it is not for memory to guess."""
    exact: dict[str, str | None] = {}
    for entry in entries:
        for text in (entry.question, *entry.alternatives):
            key = normalized_question(text)
            exact[key] = entry.correction_id if exact.get(key, entry.correction_id) == entry.correction_id else None
    return exact


class CorrectionMemory:
    def __init__(self, settings: Settings, db: Engine, *, refresh_seconds: float = 2.0):
        self.settings = settings
        self.db = db
        self.refresh_seconds = refresh_seconds
        self._fingerprint: tuple | None = None
        self._checked_at = 0.0
        self._index = HybridIndex([])
        self._rows: dict[str, tuple[str, str]] = {}
        self._exact: dict[str, str | None] = {}  # normalised approved wording -> its correction (None: several)
        self._vectors: dict[str, np.ndarray] = {}  # text -> vector, so refreshes embed only new texts
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._selectors: dict = {}
        self._neutral: dict[str, float] = {}  # answer -> log p(answer | neutral question), for _neutral_version
        self._neutral_version: str | None = None
        self._scoring_error = ""
        self._last_vector: tuple[str, np.ndarray] | None = None

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
            self._exact = exact_wordings(entries)
            self._fingerprint = fingerprint

    def search(self, query: str, *, held_out: tuple[str, str] | None = None) -> list[Scored]:
        """Every correction scored for ``query``, best first. ``held_out`` (correction id, text) leaves
        that phrasing out of the index (calibration's leave-one-out)."""
        self.refresh()
        with self._lock:
            index = self._index
        return index.search(query, exclude=index.doc_ids(*held_out) if held_out else (), vector=self._vector(query))

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

    def decide(self, messages: list[dict[str, str]], scorer: AnswerScorer | None = None) -> MemoryDecision:
        """The outcome for the last user message of ``messages`` (see the module docstring)."""
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not self.settings.memory_enabled or not users or not users[-1].strip():
            return MemoryDecision()
        turn, previous = users[-1], users[-2] if len(users) > 1 else ""
        answered = self._answered_clarification(messages, turn)
        if answered is not None:
            return answered
        query = turn
        scores, reason = self.search(turn), ""
        if previous:
            follow_up = is_follow_up(turn, has_history=True, max_words=self.settings.memory_followup_max_words)
            with_context = self.search(f"{previous} {turn}") if scores else []
            moved = bool(scores and with_context and with_context[0].correction_id != scores[0].correction_id)
            if follow_up or moved:
                reason = "follow-up: leans on earlier turns" if follow_up else "follow-up: context changes the match"
                scores, query = with_context, f"{previous} {turn}"
        if not scores:
            return MemoryDecision()
        exact = self.exact_match(turn) if not reason and self.settings.memory_verified_enabled else None
        if exact is not None:  # the approved wording itself: staff already said what answers it
            hit = next((s for s in scores if s.correction_id == exact), Scored(exact, 1.0, 1.0, 1.0))
            return MemoryDecision(VERIFIED, [self._hit(hit)],
                                  [s.as_dict() for s in scores[:LOGGED_SCORES]], "exact approved question")
        if self.topic_score(query) < self.settings.memory_topic_threshold:  # small talk, general: no scoring
            return MemoryDecision(NONE, [], [s.as_dict() for s in scores[:LOGGED_SCORES]],
                                  reason or "not about the company")
        retrieved = scores[:self.settings.memory_candidates]
        candidates, scored = self.candidates(messages, retrieved, scorer)
        selectors = self.selectors(scorer.version_id if scorer else None)
        chances = [selectors.for_scored(scored).probability(c) for c in candidates]
        order = sorted(range(len(candidates)), key=lambda i: -chances[i])
        logged = [{**s.as_dict(), "pmi": round(c.pmi, 4), "probability": round(p, 4)}
                  for s, c, p in zip(retrieved, candidates, chances)][:LOGGED_SCORES]
        best = order[0]
        if not reason and self.settings.memory_verified_enabled \
                and chances[best] >= (selectors.verified_probability or self.settings.memory_verified_probability):
            return MemoryDecision(VERIFIED, [self._hit(retrieved[best])], logged, reason or "selected")
        if self.settings.memory_clarify_enabled and self.settings.memory_verified_enabled:  # a yes is verified
            if chances[best] >= self.settings.memory_clarify_probability:
                offered, why = [best], "likely, asked the customer to confirm"
            else:
                offered = [i for i in order[:self.settings.memory_clarify_choices]
                           if chances[i] >= self.settings.memory_clarify_choice_probability]
                why = "plausible, asked the customer to choose"
            if offered:
                hits = [self._hit(retrieved[i]) for i in offered]
                return MemoryDecision(CLARIFY, hits, logged, reason or why,
                                      reply=clarify_reply(self.settings, [h.question for h in hits]))
        if self.settings.memory_grounded_enabled:
            hits = [self._hit(retrieved[i]) for i in order[:self.settings.memory_max_hits]]
            return MemoryDecision(GROUNDED, hits, logged, reason or "no answer selected with confidence")
        if self.settings.memory_handoff_enabled:
            return MemoryDecision(HANDOFF, [], logged, reason or "no approved answer covers it with confidence",
                                  reply=self.settings.memory_handoff_reply)
        return MemoryDecision(NONE, [], logged, reason)

    def _answered_clarification(self, messages: list[dict[str, str]], turn: str) -> MemoryDecision | None:
        """The decision when ``turn`` answers a clarifying question of the assistant's previous reply:
        yes → that approved answer, verified; no → handoff. None when it is not such an answer."""
        before = [m for m in messages if m["role"] in ("user", "assistant")][:-1]
        if not self.settings.memory_clarify_enabled or not before or before[-1]["role"] != "assistant":
            return None
        offered = offered_questions(self.settings, before[-1]["content"] or "")
        choice = picked(turn, len(offered)) if offered else None
        if choice is None:
            return None
        correction_id = (self._ids_of([offered[choice]]) or [None])[0] if choice != NONE_OF_THEM else None
        if correction_id is not None and self.settings.memory_verified_enabled:
            return MemoryDecision(VERIFIED, [self._hit(Scored(correction_id, 1.0, 1.0, 1.0))], [],
                                  "confirmed by the customer")
        others = self._next_offer(before, offered) if choice == NONE_OF_THEM else []
        if others:
            return MemoryDecision(CLARIFY, others, [], "the customer said no to what was offered; offered the next "
                                  "questions found", reply=clarify_reply(self.settings, [h.question for h in others]))
        reason = ("the customer said the question offered is not theirs" if choice == NONE_OF_THEM
                  else "the question offered is no longer approved")
        if self.settings.memory_handoff_enabled:
            return MemoryDecision(HANDOFF, [], [], reason, reply=self.settings.memory_handoff_reply)
        return MemoryDecision(NONE, [], [], reason)

    def _next_offer(self, before: list[dict[str, str]], declined: list[str]) -> list[MemoryHit]:
        """After a no to the questions offered (``declined``), the next approved questions retrieval
        finds for the customer's question (score ≥ ``memory_clarify_after_no_score``), up to
        ``memory_clarify_choices``; once per question: a no to this list is handed off. Replayed on the
        three KBs' held-out rewordings, most customers who said no had their question a little further
        down retrieval's list (docs/memory.md); a list costs them one more turn, a handoff a wait for staff."""
        if self.settings.memory_clarify_choices < 2 or len(before) < 2 or before[-2]["role"] != "user":
            return []
        if len(before) >= 3 and before[-3]["role"] == "assistant" and answers_an_offer(before[-2]["content"]) \
                and offered_questions(self.settings, before[-3]["content"] or ""):
            return []  # this offer already followed a no
        declined_ids = self._ids_of(declined)
        found = [s for s in self.search(before[-2]["content"]) if s.correction_id not in declined_ids
                 and s.score >= self.settings.memory_clarify_after_no_score]
        return [self._hit(s) for s in found[:self.settings.memory_clarify_choices]]

    def _ids_of(self, questions: list[str]) -> list[str]:
        """The approved corrections whose question is one of ``questions`` (as a clarifying reply showed
        them, normalised), in the index's order."""
        keys = {normalized_question(q) for q in questions}
        with self._lock:
            return [cid for cid, (question, _) in self._rows.items() if normalized_question(question) in keys]

    def exact_match(self, turn: str) -> str | None:
        """The correction whose approved question or accepted phrasing ``turn`` is (case, spacing and
        trailing punctuation aside), when exactly one correction has that wording."""
        with self._lock:
            return self._exact.get(normalized_question(turn))

    def topic_score(self, query: str) -> float:
        """How much nearer ``query`` is to what customers ask a company than to small talk and general
        questions (``feedback.memory.topic``); the approved questions count as the company's."""
        index = self.index
        return REFERENCE.score(self._vector(query), index.vectors[~index.is_answer])

    def _vector(self, text: str) -> np.ndarray:
        """The query's embedding, kept for the next call (a turn embeds once for search and topic)."""
        cached = self._last_vector
        if cached is not None and cached[0] == text:
            return cached[1]
        vector = embed([text])[0]
        self._last_vector = (text, vector)
        return vector

    @property
    def index(self) -> HybridIndex:
        with self._lock:
            return self._index

    def forget_selectors(self) -> None:
        """Read the selectors again at the next turn (calibration stored new ones)."""
        self._selectors = {}

    def selectors(self, version_id: str | None) -> SelectorPair:
        """The selectors calibrated for this version (``tuneloop memory calibrate``), else the defaults;
        read once per version and process."""
        if version_id not in self._selectors:
            self._selectors = {version_id: load_selectors(self.settings.data_dir, version_id)}
        return self._selectors[version_id]

    def _hit(self, scored: Scored) -> MemoryHit:
        return MemoryHit(scored.correction_id, *self._rows[scored.correction_id], scored.score)

    def candidates(self, messages: list[dict[str, str]], retrieved: list[Scored],
                    scorer: AnswerScorer | None) -> tuple[list[Candidate], bool]:
        """The candidates with their PMI when the served model can score them (True), else retrieval alone."""
        pairs = [(s.correction_id, s.score) for s in retrieved]
        if scorer is None:
            return candidates_from(pairs), False
        try:
            pmi = self.pmi(messages, [s.correction_id for s in retrieved], scorer)
        except Exception as exc:  # scoring is a help: an engine that cannot, or failed, leaves retrieval
            if str(exc) != self._scoring_error:
                log.warning("answer scoring unavailable (%s); selecting by retrieval alone", exc)
                self._scoring_error = str(exc)
            return candidates_from(pairs), False
        return candidates_from(pairs, pmi), True

    def pmi(self, messages: list[dict[str, str]], correction_ids: list[str], scorer: AnswerScorer) -> list[float]:
        """Per answer token, how much likelier the conversation makes each answer than a neutral
        question does. The neutral scores depend only on the answer and the weights: computed once
        per version and answer."""
        return self.pmi_many([(messages, correction_ids)], scorer)[0]

    def pmi_many(self, turns: list[tuple[list[dict[str, str]], list[str]]], scorer: AnswerScorer) -> list[list[float]]:
        """``pmi`` for many (conversation, candidate ids) at once, all answers in one scoring call (what
        calibration and the benchmarks score)."""
        system = [{"role": "system", "content": scorer.system_prompt}]
        if self._neutral_version != scorer.version_id:
            self._neutral, self._neutral_version = {}, scorer.version_id
        conversations, answers = [], []
        for messages, correction_ids in turns:
            conversation = system + [m for m in messages if m["role"] != "system"]
            for cid in correction_ids:
                conversations.append(conversation)
                answers.append(self._rows[cid][1])
        missing = list(dict.fromkeys(a for a in answers if a not in self._neutral))
        neutral = system + [{"role": "user", "content": NEUTRAL_QUESTION}]
        results = scorer(conversations + [neutral] * len(missing), answers + missing,
                         self.settings.memory_scored_answer_tokens)
        for answer, score in zip(missing, results[len(answers):]):
            self._neutral[answer] = score.logprob
        flat = [(score.logprob - self._neutral[a]) / max(1, score.tokens) for a, score in zip(answers, results)]
        out, start = [], 0
        for _, correction_ids in turns:
            out.append(flat[start:start + len(correction_ids)])
            start += len(correction_ids)
        return out
