"""Fitting answer selection on this deployment's own data (``tuneloop memory calibrate``).

* **Positives**: every approved correction's alternative questions, each held out in turn (leave one
  out: the phrasing is removed from the index it is scored against), so they stand for a customer's
  new wording of a known question; the right answer is their correction's. Plus the customers' own
  wordings they confirmed: a logged question whose clarifying question ("Do you mean ...?",
  ``bot.clarify``) the customer answered yes, with the correction offered.
* **Negatives**: logged user questions that no correction covers (not a copy of, and not a
  near-duplicate by ``duplicate_question_threshold`` of, any correction's question or phrasing, not
  confirmed by a yes, and not themselves a yes or no), plus any extra off-topic questions the caller
  supplies. A verified reply to a negative is always wrong.

Each question's candidates are scored as serving scores them (``CorrectionMemory.candidates``: the
served version's weights when a scorer is given) and the logistic selectors are fitted on them
(``feedback.memory.selection.fit``). For each probability threshold the report counts verified
replies, right and wrong; the suggestion is the lowest threshold whose precision meets the target
(default 0.99: at most 1% of verified replies wrong) with at most 1 - target of the negatives
verified. ``save`` stores the selectors and that threshold for the version they were fitted on:
each round changes the weights, so a selector belongs to one version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlmodel import Session, col, select

from bot.clarify import NONE_OF_THEM, answers_an_offer, offered_questions, picked
from bot.memory import AnswerScorer
from bot.models import Message
from engine.embeddings import embed
from feedback.corrections.service import approved_corrections, normalized_question
from feedback.memory.selection import (DEFAULT_SELECTORS, FEATURES, RETRIEVAL_FEATURES, Candidate, Selector,
                                       SelectorPair, candidates_from, fit, save_selectors)
from feedback.memory.service import CorrectionMemory
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

NEGATIVE_SCAN_LIMIT = 2000
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 20))  # 0.10 .. 0.95
MIN_POSITIVES, MIN_NEGATIVES = 5, 5  # fewer: the defaults stay, the curve is still reported


@dataclass
class CurvePoint:
    threshold: float
    verified: int  # replies that would be verified (positives and negatives)
    correct: int  # verified positives answered with their own correction
    wrong: int  # verified replies that are wrong (other correction, or any negative)
    negatives_verified: int
    precision: float | None  # None when nothing is verified
    recall: float
    offtopic_rate: float | None  # negatives_verified / negatives; None without negatives


@dataclass
class Calibration:
    positives: int
    negatives: int
    target_precision: float
    scored_by_model: bool  # whether the served weights scored the candidates (else retrieval alone)
    fitted: bool  # False: too little data, the defaults were measured instead
    selector: dict
    points: list[CurvePoint]
    suggested: CurvePoint | None
    current: CurvePoint | None  # at the probability serving uses now
    saved_for: str | None = None  # the version the selectors were stored for
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelledQuestion:
    text: str
    correction_id: str | None  # the right answer's correction; None for a question none covers


def calibrate(session: Session, settings: Settings, memory: CorrectionMemory, *, scorer: AnswerScorer | None = None,
              target_precision: float = 0.99, extra_negatives: Sequence[str] = (), save: bool = False,
              thresholds: Sequence[float] = THRESHOLDS) -> Calibration:
    if not 0.0 < target_precision <= 1.0:
        raise InvalidInputError("target precision must be in (0, 1], e.g. 0.99 for at most 1% wrong verified replies",
                                param="target_precision")
    memory.refresh(force=True)
    corrections = approved_corrections(session)
    positives = [LabelledQuestion(alt, c.id) for c in corrections for alt in (c.alternative_questions or ())]
    confirmed = confirmed_wordings(session, settings, corrections)
    known = {normalized_question(q.text) for q in positives}
    positives += [q for q in confirmed if normalized_question(q.text) not in known]
    confirmed_texts = {normalized_question(q.text) for q in confirmed}
    negatives = [LabelledQuestion(t, None) for t in _negatives(session, settings, memory, list(extra_negatives))
                 if normalized_question(t) not in confirmed_texts]
    notes = _data_notes(corrections, positives, negatives)
    questions = candidate_rows(memory, positives + negatives, scorer, settings.memory_candidates)
    scored = any(by_model for _, by_model in questions)
    rows = [row for candidates, _ in questions for row in candidates]
    fitted = len(positives) >= MIN_POSITIVES and len(negatives) >= MIN_NEGATIVES
    pair = DEFAULT_SELECTORS
    if fitted:
        pair = SelectorPair(fit(rows, FEATURES) if scored else DEFAULT_SELECTORS.with_model,
                            fit(rows, RETRIEVAL_FEATURES))
        for selector in (pair.with_model, pair.retrieval_only):
            selector.fitted_on = f"{len(positives)} phrasings, {len(negatives)} uncovered questions"
    else:
        notes.append(f"fitting needs at least {MIN_POSITIVES} alternative questions and {MIN_NEGATIVES} uncovered "
                     "questions: the defaults are measured instead")
    selector = pair.for_scored(scored)
    outcomes = [_best(selector, candidates) for candidates, _ in questions]
    n_pos = len(positives)
    points = [_point(t, outcomes[:n_pos], outcomes[n_pos:]) for t in thresholds]
    good = [p for p in points if p.precision is not None and p.precision >= target_precision
            and (p.offtopic_rate is None or p.offtopic_rate <= 1 - target_precision)]
    suggested = good[0] if good else None
    if points and not good:
        notes.append(f"no threshold reaches precision {target_precision:.2f}: verified replies would be wrong too "
                     "often on this data; add alternative questions or turn verified replies off")
    current = _point(settings.memory_verified_probability, outcomes[:n_pos], outcomes[n_pos:])
    saved_for = None
    if save and fitted and scorer is not None:
        pair.verified_probability = suggested.threshold if suggested else None
        save_selectors(settings.data_dir, scorer.version_id, pair, {"positives": n_pos, "negatives": len(negatives),
                                                                    "target_precision": target_precision})
        memory.forget_selectors()
        saved_for = scorer.version_id
    return Calibration(n_pos, len(negatives), target_precision, scored, fitted, selector.as_dict(), points, suggested,
                       current, saved_for, notes)


def candidate_rows(memory: CorrectionMemory, questions: Sequence[LabelledQuestion], scorer: AnswerScorer | None,
                   k: int, *, chunk: int = 16) -> list[tuple[list[tuple[Candidate, bool]], bool]]:
    """Each question's candidates as serving scores them, each labelled with whether it is the right
    one (a positive's own phrasing held out of the index), and whether the model scored them. The
    candidates of ``chunk`` questions are scored in one call."""
    retrieved = [memory.search(q.text, held_out=(q.correction_id, q.text) if q.correction_id else None)[:k]
                 for q in questions]
    pmi: list[list[float] | None] = [None] * len(questions)
    if scorer is not None:
        try:
            for start in range(0, len(questions), chunk):
                turns = [([{"role": "user", "content": q.text}], [s.correction_id for s in r])
                         for q, r in zip(questions[start:start + chunk], retrieved[start:start + chunk])]
                pmi[start:start + chunk] = memory.pmi_many(turns, scorer)
                log.info("calibration: scored %d of %d questions", min(start + chunk, len(questions)), len(questions))
        except Exception as exc:  # noqa: BLE001  (calibration falls back to retrieval, as serving does)
            log.warning("answer scoring failed (%s); calibrating on retrieval alone", exc)
            pmi = [None] * len(questions)
    out = []
    for q, r, p in zip(questions, retrieved, pmi):
        candidates = candidates_from([(s.correction_id, s.score) for s in r], p)
        out.append(([(c, c.correction_id == q.correction_id) for c in candidates], p is not None))
    return out


def _best(selector: Selector, candidates: list[tuple[Candidate, bool]]) -> tuple[float, bool]:
    """The best candidate's probability and whether it is the right answer."""
    if not candidates:
        return 0.0, False
    chance, right = max((selector.probability(c), right) for c, right in candidates)
    return chance, right


def _point(threshold: float, pos: list[tuple[float, bool]], neg: list[tuple[float, bool]]) -> CurvePoint:
    pos_verified = [right for chance, right in pos if chance >= threshold]
    neg_verified = sum(chance >= threshold for chance, _ in neg)
    correct = sum(pos_verified)
    total = len(pos_verified) + neg_verified
    return CurvePoint(
        threshold=round(threshold, 3), verified=total, correct=correct, wrong=total - correct,
        negatives_verified=neg_verified, precision=correct / total if total else None,
        recall=correct / len(pos) if pos else 0.0, offtopic_rate=neg_verified / len(neg) if neg else None)


def _data_notes(corrections: list, positives: list, negatives: list) -> list[str]:
    notes = []
    if not corrections:
        notes.append("no approved corrections yet: approve some before calibrating")
    elif not positives:
        notes.append("no correction has alternative questions: add some (GET /v1/corrections/{id}/phrasing-"
                     "suggestions) so recall and wrong matches can be measured")
    if not negatives:
        notes.append("no logged question outside the corrections: pass off-topic questions with --negatives FILE")
    return notes


def confirmed_wordings(session: Session, settings: Settings, corrections: Sequence) -> list[LabelledQuestion]:
    """Logged questions a customer confirmed: asked, offered a correction's approved question in a
    clarifying reply, answered yes (or picked it by its number). Read from the conversations' text (an API client that sends the
    history stores the offer as it was shown), newest first, each question once."""
    recent = session.exec(select(Message).where(Message.role == "user")
                          .order_by(col(Message.created_at).desc()).limit(NEGATIVE_SCAN_LIMIT)).all()
    yeses = [m for m in recent if answers_an_offer(m.content or "") and m.position >= 2]
    if not yeses:
        return []
    conversations = {m.conversation_id for m in yeses}
    earlier = session.exec(select(Message).where(col(Message.conversation_id).in_(conversations))).all()
    at = {(m.conversation_id, m.position): m for m in earlier}
    by_question = {normalized_question(c.question): c.id for c in corrections}
    out: dict[str, LabelledQuestion] = {}
    for yes in yeses:
        offer, asked = at.get((yes.conversation_id, yes.position - 1)), at.get((yes.conversation_id, yes.position - 2))
        if offer is None or asked is None or offer.role != "assistant" or asked.role != "user":
            continue
        offered = offered_questions(settings, offer.content or "")
        choice = picked(yes.content or "", len(offered)) if offered else None
        back = yes.position - 2  # a pick from the list offered after a no: the question is before the no
        while answers_an_offer(asked.content or "") and (earlier_asked := at.get((yes.conversation_id, back - 2))):
            asked, back = earlier_asked, back - 2
        correction_id = by_question.get(normalized_question(offered[choice])) \
            if choice is not None and choice != NONE_OF_THEM else None
        if correction_id and asked.role == "user" and asked.content.strip() \
                and not answers_an_offer(asked.content):
            out.setdefault(normalized_question(asked.content), LabelledQuestion(asked.content.strip(), correction_id))
    return list(out.values())


def _negatives(session: Session, settings: Settings, memory: CorrectionMemory, extra: list[str]) -> list[str]:
    """Logged user questions no correction covers, plus ``extra``; each text once."""
    rows = session.exec(select(Message.content).where(Message.role == "user")
                        .order_by(col(Message.created_at).desc()).limit(NEGATIVE_SCAN_LIMIT)).all()
    index = memory.index
    known = {normalized_question(t) for t in index.texts}
    logged = list(dict.fromkeys(t.strip() for t in rows if t and t.strip() and normalized_question(t) not in known
                                and not answers_an_offer(t)))  # "yes", "no", "2" answer a clarifying question
    if logged and len(index):
        questions = index.vectors[~index.is_answer]
        nearest = (embed(logged) @ questions.T).max(axis=1)
        logged = [t for t, s in zip(logged, nearest) if s < settings.duplicate_question_threshold]
    extra = [t.strip() for t in extra if t.strip() and normalized_question(t) not in known]
    return list(dict.fromkeys(logged + extra))


def format_table(report: Calibration) -> str:
    """The curve as a plain-text table, with the suggestion and the probability in use marked."""
    weights = ", ".join(f"{n} {w:+.2f}" for n, w in zip(report.selector["features"], report.selector["weights"]))
    lines = [f"positives (held-out alternative questions): {report.positives}   negatives (uncovered): "
             f"{report.negatives}   target precision: {report.target_precision:.3f}",
             f"selector ({'fitted' if report.fitted else 'defaults'}, "
             f"{'served model + retrieval' if report.scored_by_model else 'retrieval alone'}): "
             f"{weights}, bias {report.selector['bias']:+.2f}",
             "", f"{'probability':>11}  {'verified':>8}  {'correct':>7}  {'wrong':>5}  {'precision':>9}  {'recall':>6}  "
             f"{'uncovered verified':>18}"]
    for p in report.points:
        mark = "  <- suggested" if report.suggested and p.threshold == report.suggested.threshold else ""
        lines.append(f"{p.threshold:>11.3f}  {p.verified:>8}  {p.correct:>7}  {p.wrong:>5}  {_pct(p.precision):>9}  "
                     f"{_pct(p.recall):>6}  {_pct(p.offtopic_rate):>18}{mark}")
    lines.append("")
    c = report.current
    if c is not None:
        lines.append(f"configured memory_verified_probability {c.threshold:.3f}: precision {_pct(c.precision)}, "
                     f"recall {_pct(c.recall)}, uncovered verified {_pct(c.offtopic_rate)}")
    if report.suggested:
        lines.append(f"suggested: TUNELOOP_MEMORY_VERIFIED_PROBABILITY={report.suggested.threshold:.3f} "
                     f"(precision {_pct(report.suggested.precision)}, recall {_pct(report.suggested.recall)})")
    if report.saved_for:
        lines.append(f"saved: the fitted selectors and that probability now serve version {report.saved_for}")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
