"""Calibrating verified replies on this deployment's own data (``tuneloop memory calibrate``).

* **Positives**: every approved correction's alternative questions, each held out in turn (leave one
  out: the phrasing is removed from the index it is scored against), so they stand for a customer's
  new wording of a known question.
* **Negatives**: logged user questions that no correction covers (not a copy of, and not a
  near-duplicate by ``duplicate_question_threshold`` of, any correction's question or phrasing), plus
  any extra off-topic questions the caller supplies. A verified reply to a negative is always wrong.

For each threshold (with the configured runner-up margin) a phrasing is answered verified when its
best correction scores at or above it; it is right when that correction is its own. Precision is the
share of verified replies that were right, recall the share of positives answered verified and right.
The suggestion is the lowest threshold whose precision meets the target (default 0.99: at most 1% of
verified replies wrong) and whose off-topic verified rate stays within 1 - target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlmodel import Session, col, select

from bot.models import Message
from engine.embeddings import embed
from feedback.corrections.service import normalized_question, approved_corrections
from feedback.memory.retrieval import Entry, HybridIndex
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import Settings

NEGATIVE_SCAN_LIMIT = 2000
THRESHOLDS = tuple(round(0.30 + 0.025 * i, 3) for i in range(27))  # 0.30 .. 0.95


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
    margin: float
    target_precision: float
    points: list[CurvePoint]
    suggested: CurvePoint | None
    current: CurvePoint | None  # the point at the configured memory_verified_threshold
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate(session: Session, settings: Settings, *, target_precision: float = 0.99, margin: float | None = None,
              extra_negatives: Sequence[str] = (), thresholds: Sequence[float] = THRESHOLDS) -> Calibration:
    if not 0.0 < target_precision <= 1.0:
        raise InvalidInputError("target precision must be in (0, 1], e.g. 0.99 for at most 1% wrong verified replies",
                                param="target_precision")
    margin = settings.memory_verified_margin if margin is None else margin
    corrections = approved_corrections(session)
    entries = [Entry(c.id, c.question, c.answer, tuple(c.alternative_questions or ())) for c in corrections]
    index = HybridIndex(entries, lexical_weight=settings.memory_lexical_weight,
                        answer_weight=settings.memory_answer_weight)
    positives = [(c.id, alt) for c in corrections for alt in (c.alternative_questions or ())]
    negatives = _negatives(session, settings, index, list(extra_negatives))
    notes = []
    if not corrections:
        notes.append("no approved corrections yet: approve some before calibrating")
    elif not positives:
        notes.append("no correction has alternative questions: add some (GET /v1/corrections/{id}/phrasing-"
                     "suggestions) so recall and wrong matches can be measured")
    if not negatives:
        notes.append("no logged question outside the corrections: pass off-topic questions with --negatives FILE")
    pos = [_top_two(index.search(text, exclude=index.doc_ids(cid, text))) + (cid,) for cid, text in positives]
    neg = [_top_two(index.search(text)) for text in negatives]
    points = [_point(t, margin, pos, neg) for t in thresholds]
    good = [p for p in points if p.precision is not None and p.precision >= target_precision
            and (p.offtopic_rate is None or p.offtopic_rate <= 1 - target_precision)]
    suggested = good[0] if good else None
    if points and not good:
        notes.append(f"no threshold reaches precision {target_precision:.2f}: verified replies would be wrong too "
                     "often on this data; add alternative questions or turn verified replies off")
    current = _point(settings.memory_verified_threshold, margin, pos, neg)
    return Calibration(len(pos), len(neg), margin, target_precision, points, suggested, current, notes)


def _top_two(scores) -> tuple[str | None, float, float]:
    if not scores:
        return None, 0.0, 0.0
    return scores[0].correction_id, scores[0].score, scores[1].score if len(scores) > 1 else 0.0


def _point(threshold: float, margin: float, pos: list, neg: list) -> CurvePoint:
    def verified(best: float, second: float) -> bool:
        return best >= threshold and best - second >= margin

    pos_verified = [(top == own) for top, best, second, own in pos if verified(best, second)]
    neg_verified = sum(verified(best, second) for _, best, second in neg)
    correct = sum(pos_verified)
    total = len(pos_verified) + neg_verified
    return CurvePoint(
        threshold=round(threshold, 3), verified=total, correct=correct, wrong=total - correct,
        negatives_verified=neg_verified, precision=correct / total if total else None,
        recall=correct / len(pos) if pos else 0.0, offtopic_rate=neg_verified / len(neg) if neg else None)


def _negatives(session: Session, settings: Settings, index: HybridIndex, extra: list[str]) -> list[str]:
    """Logged user questions no correction covers, plus ``extra``; each text once."""
    rows = session.exec(select(Message.content).where(Message.role == "user")
                        .order_by(col(Message.created_at).desc()).limit(NEGATIVE_SCAN_LIMIT)).all()
    known = {normalized_question(t) for t in index.texts}
    logged = list(dict.fromkeys(t.strip() for t in rows if t and t.strip() and normalized_question(t) not in known))
    if logged and len(index):
        questions = index.vectors[~index.is_answer]
        nearest = (embed(logged) @ questions.T).max(axis=1)
        logged = [t for t, s in zip(logged, nearest) if s < settings.duplicate_question_threshold]
    extra = [t.strip() for t in extra if t.strip() and normalized_question(t) not in known]
    return list(dict.fromkeys(logged + extra))


def format_table(report: Calibration) -> str:
    """The curve as a plain-text table, with the suggestion and the configured threshold marked."""
    lines = [f"positives (held-out alternative questions): {report.positives}   negatives (off-topic): "
             f"{report.negatives}   margin: {report.margin:.3f}   target precision: {report.target_precision:.3f}",
             "", f"{'threshold':>9}  {'verified':>8}  {'correct':>7}  {'wrong':>5}  {'precision':>9}  {'recall':>6}  "
             f"{'off-topic verified':>18}"]
    for p in report.points:
        mark = "  <- suggested" if report.suggested and p.threshold == report.suggested.threshold else ""
        lines.append(f"{p.threshold:>9.3f}  {p.verified:>8}  {p.correct:>7}  {p.wrong:>5}  {_pct(p.precision):>9}  "
                     f"{_pct(p.recall):>6}  {_pct(p.offtopic_rate):>18}{mark}")
    lines.append("")
    c = report.current
    if c is not None:
        lines.append(f"configured memory_verified_threshold {c.threshold:.3f}: precision {_pct(c.precision)}, "
                     f"recall {_pct(c.recall)}, off-topic verified {_pct(c.offtopic_rate)}")
    if report.suggested:
        lines.append(f"suggested: TUNELOOP_MEMORY_VERIFIED_THRESHOLD={report.suggested.threshold:.3f} "
                     f"(precision {_pct(report.suggested.precision)}, recall {_pct(report.suggested.recall)})")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"



