"""Suggested alternative phrasings for a correction ("other ways customers ask this").

Three sources, each kept only when correction memory would route the phrasing to this correction:

* ``logs``: real customers' logged questions near the correction (turns sent with ``store: false``
  are never logged, so evaluation traffic never becomes a suggestion);
* ``model``: the served model rewriting the question; a rewrite is kept only when it retrieves its own
  correction first, plausibly (``memory_threshold``) and clearly ahead of any other
  (``memory_verified_margin``);
* ``teacher``: the distillation teacher (``feedback.distill.teacher``) doing the same, when one is configured.

A phrasing is offered only when accepting it cannot make the bot wrong elsewhere:

* every other approved correction's question and accepted phrasings still retrieve their own
  correction first with it in the index (``PhrasingRouter.conflicts``); a phrasing that would pull
  another correction's customers here is withheld, shown as "asks about: <that correction>";
* a suggestion nearer to a question waiting in the review queue as a question of its own (its answer
  was disliked, and no correction answers it yet) than to the correction's own question is withheld:
  it is probably that other fact's rewording, and staff answer it there. Measured (issue 24): accepted as offered, such suggestions made the bot
  answer other facts' questions with the wrong approved text, verified.

The author accepts, edits or removes them (``alternative_questions`` on the correction); nothing here
writes to the database.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace

from sqlmodel import Session, col, select

from bot.conversations import served_version
from bot.models import Message
from engine.embeddings import embed
from engine.protocol import SamplingParams
from feedback.corrections.models import Correction, CorrectionStatus
from feedback.corrections.service import normalized_question
from feedback.distill.teacher import Teacher
from feedback.errors import FeedbackError
from feedback.memory.retrieval import Entry, HybridIndex
from feedback.ratings.models import Rating
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

SOURCES = ("logs", "model", "teacher")
LOG_SCAN_LIMIT = 1000  # latest logged user questions considered
LOG_MIN_SIMILARITY = 0.55  # dense similarity to the correction's question a logged question needs first
REWRITES = 5
_BULLET_RE = re.compile(r"^\s*(?:(?:[-*\u2022]|\d+[.)]|\(\d+\)|question:)\s*)+", re.IGNORECASE)
_EXAMPLE_WORDS = {"canada", "canadian", "toronto", "parcel"}  # from the worked example: a copied rewrite


@dataclass
class PhrasingSuggestion:
    text: str
    source: str  # logs | model | teacher
    score: float  # combined memory score of this phrasing for the correction
    asks_about: str | None = None  # withheld: the question of the correction (or queue item) it belongs to
    reason: str = ""  # withheld: why

    def as_dict(self) -> dict:
        return {**asdict(self), "score": round(self.score, 4)}


def rewrite_prompt(question: str) -> list[dict[str, str]]:
    """One worked example first: the bundled 135M model copies the layout of an example far more
    reliably than it follows an instruction (without it, most of its lines are not questions)."""
    return [{"role": "user", "content": f"Write {REWRITES} different ways a customer could ask a question, one per "
             "line, without answering it.\nQuestion: Do you ship to Canada?"},
            {"role": "assistant", "content": "1. Can I get my order delivered to Canada?\n2. Is shipping to Canada "
             "available?\n3. Do you deliver to Canadian addresses?\n4. Can you send a parcel to Toronto?\n"
             "5. Will you ship my order to Canada?"},
            {"role": "user", "content": f"Question: {question}"}]


def parse_rewrites(text: str) -> list[str]:
    """One question per line, numbering and bullets removed; lines that are not questions dropped."""
    lines = [_BULLET_RE.sub("", line).strip().strip('"') for line in text.splitlines()]
    return [line for line in lines if line.endswith("?") and 2 <= len(line.split()) <= 30]


def _copies_example(rewrite: str, question: str) -> bool:
    words = set(re.findall(r"[a-z]+", rewrite.lower())) - set(re.findall(r"[a-z]+", question.lower()))
    return bool(words & _EXAMPLE_WORDS)


class PhrasingRouter:
    """Correction memory's index over the approved corrections plus the one being edited."""

    def __init__(self, session: Session, settings: Settings, correction: Correction):
        self.settings, self.correction = settings, correction
        others = session.exec(select(Correction).where(Correction.status == CorrectionStatus.approved,
                                                       Correction.lineage_id != correction.lineage_id)).all()
        entries = [Entry(c.id, c.question, c.answer, tuple(c.alternative_questions or ())) for c in others]
        entries.append(Entry(correction.id, correction.question, correction.answer,
                             tuple(correction.alternative_questions or ())))
        self._vectors: dict = {}
        self.index = HybridIndex(entries, lexical_weight=settings.memory_lexical_weight,
                                 answer_weight=settings.memory_answer_weight, vector_cache=self._vectors)
        self.known = {normalized_question(t) for c in [*others, correction]
                      for t in (c.question, *(c.alternative_questions or ()))}

    def accept(self, text: str, *, strict: bool) -> float | None:
        """The phrasing's score for this correction when memory routes it here, else None: this
        correction ranks first with a plausible score (≥ memory_threshold). ``strict`` (generated
        rewrites): it must also lead the runner-up by memory_verified_margin, so an ambiguous rewrite,
        one that retrieves another correction as well, is dropped."""
        if not text.strip() or normalized_question(text) in self.known:
            return None
        scores = self.index.search(text)
        if not scores or scores[0].correction_id != self.correction.id:
            return None
        if scores[0].score < self.settings.memory_threshold:
            return None
        runner_up = scores[1].score if len(scores) > 1 else 0.0
        if strict and scores[0].score - runner_up < self.settings.memory_verified_margin:
            return None
        return scores[0].score


    def conflicts(self, text: str) -> list[str]:
        """The other corrections whose question or accepted phrasing would retrieve this correction first
        once ``text`` is one of its phrasings, where it did not before (their questions): what accepting
        it would change. Each of their texts is held out of the index it is searched in, as calibration
        does, so it stands for a new customer's wording near it rather than matching itself."""
        own = self.correction.id
        entries = [replace(e, alternatives=(*e.alternatives, text)) if e.correction_id == own else e
                   for e in self.index.entries]
        added = HybridIndex(entries, lexical_weight=self.settings.memory_lexical_weight,
                            answer_weight=self.settings.memory_answer_weight, vector_cache=self._vectors)
        moved = []
        for doc, doc_text in enumerate(self.index.texts):
            entry = self.index.entries[self.index.owner[doc]]
            if self.index.is_answer[doc] or entry.correction_id == own or entry.question in moved:
                continue
            vector = self.index.vectors[doc]
            after = added.search(doc_text, vector=vector, exclude=added.doc_ids(entry.correction_id, doc_text))
            if after and after[0].correction_id == own:
                before = self.index.search(doc_text, vector=vector,
                                           exclude=self.index.doc_ids(entry.correction_id, doc_text))
                if before[0].correction_id != own:  # a change this phrasing would cause
                    moved.append(entry.question)
        return moved


def suggest_phrasings(session: Session, settings: Settings, correction: Correction, *, runtime=None,
                      sources: tuple[str, ...] = SOURCES, limit: int = 10,
                      withheld: list[PhrasingSuggestion] | None = None) -> tuple[list[PhrasingSuggestion], dict]:
    """Suggestions best first, and for each source that gave none, why (``{"teacher": "not configured"}``).
    Suggestions that routing accepts but that would make the bot wrong elsewhere are appended to
    ``withheld`` (when given), each with what it asks about."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise FeedbackError(f"unknown suggestion source(s) {', '.join(unknown)}: use {', '.join(SOURCES)}")
    router, skipped, found = PhrasingRouter(session, settings, correction), {}, []
    if "logs" in sources:
        found += _from_logs(session, router)
    for source in ("model", "teacher"):
        if source in sources:
            try:
                text = _rewrite(source, settings, correction, runtime)
            except Exception as exc:  # a suggestion source is a help, never a reason to fail the request
                log.warning("phrasing suggestions from %s failed: %s", source, exc)
                text, skipped[source] = None, str(exc)
            if text is None:
                skipped.setdefault(source, "not configured: set TUNELOOP_TEACHER_BASE_URL and TUNELOOP_TEACHER_MODEL"
                                   if source == "teacher" else "the model is still loading; try again shortly")
                continue
            for rewrite in parse_rewrites(text):
                if _copies_example(rewrite, correction.question):
                    continue
                score = router.accept(rewrite, strict=True)
                if score is not None:
                    found.append(PhrasingSuggestion(rewrite, source, score))
    unique: dict[str, PhrasingSuggestion] = {}
    for suggestion in sorted(found, key=lambda s: -s.score):
        unique.setdefault(normalized_question(suggestion.text), suggestion)
    offered, queued = [], _QueuedQuestions(session, correction)
    for suggestion in unique.values():
        if len(offered) >= limit:
            break
        if nearer := queued.nearer_than_own(suggestion.text):
            suggestion.asks_about, suggestion.reason = nearer, \
                "nearer to a question waiting in the review queue as its own than to this one: answer it there"
        elif moved := router.conflicts(suggestion.text):
            suggestion.asks_about, suggestion.reason = moved[0], \
                f"would route {len(moved)} other correction(s)' customers here"
        else:
            offered.append(suggestion)
            continue
        if withheld is not None:
            withheld.append(suggestion)
    return offered, skipped


class _QueuedQuestions:
    """Logged user questions whose answer was disliked and that no correction answers yet: each waits in
    the review queue as a question of its own (the correction's own source question is not among them).
    A suggestion nearer to one of them than to the correction's question is probably that question's
    rewording, another fact: in the loop of issue 24, the other facts' customers' wordings were all near
    this correction's question, and each nearer still to its own fact's disliked question."""

    def __init__(self, session: Session, correction: Correction):
        answer = Message.__table__.alias("answer")
        corrected = select(Correction.message_id).where(Correction.message_id.is_not(None))
        disliked = select(Rating.message_id).where(Rating.value < 0)
        rows = session.exec(
            select(Message.content).join(answer, (answer.c.conversation_id == Message.conversation_id)
                                         & (answer.c.position == Message.position + 1))
            .where(Message.role == "user", answer.c.role == "assistant", answer.c.id.in_(disliked),
                   answer.c.id.not_in(corrected))
            .order_by(col(Message.created_at).desc()).limit(LOG_SCAN_LIMIT)).all()
        own = {normalized_question(t) for t in (correction.question, *(correction.alternative_questions or ()))}
        self.texts = list(dict.fromkeys(t.strip() for t in rows if t and normalized_question(t) not in own))
        self.own = [correction.question, *(correction.alternative_questions or ())]
        self._vectors = None

    def nearer_than_own(self, text: str) -> str | None:
        """The queued question ``text`` is nearer to than to any of the correction's own questions."""
        if not self.texts:
            return None
        if self._vectors is None:
            self._vectors = embed(self.texts + self.own)
        queued, own = self._vectors[:len(self.texts)], self._vectors[len(self.texts):]
        vector = embed([text])[0]
        near = queued @ vector
        best = int(near.argmax())
        return self.texts[best] if near[best] > float((own @ vector).max()) else None


def _from_logs(session: Session, router: PhrasingRouter) -> list[PhrasingSuggestion]:
    rows = session.exec(select(Message.content).where(Message.role == "user")
                        .order_by(col(Message.created_at).desc()).limit(LOG_SCAN_LIMIT)).all()
    texts = list(dict.fromkeys(t.strip() for t in rows if t and t.strip() and normalized_question(t) not in router.known))
    if not texts:
        return []
    vectors = embed(texts)
    near = vectors @ embed([router.correction.question])[0]
    result = []
    for text, vector, similarity in zip(texts, vectors, near):
        if similarity >= LOG_MIN_SIMILARITY:
            scores = router.index.search(text, vector=vector)
            if scores and scores[0].correction_id == router.correction.id:
                result.append(PhrasingSuggestion(text, "logs", scores[0].score))
    return result


def _rewrite(source: str, settings: Settings, correction: Correction, runtime) -> str | None:
    """The raw rewrite text from the served model or the teacher; None when that source is not available."""
    messages = rewrite_prompt(correction.question)
    if source == "teacher":
        if not (settings.teacher_base_url and settings.teacher_model):
            return None

        return Teacher(settings).complete(messages, temperature=0.7, max_tokens=200).text
    if runtime is None or not runtime.ready:
        return None

    with Session(runtime.db) as session:
        version = served_version(session, runtime, settings.production_alias)
    return runtime.generate(version, messages, SamplingParams(max_tokens=160, temperature=0.7, seed=0)).text
