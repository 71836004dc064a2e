"""Distillation: a teacher model writes question/answer pairs that staff review like any correction.

Three kinds of run (``DistillKind``):

- **task**: from a paragraph describing the business, diverse customer questions with ideal answers
  in the company's voice, ``PAIRS_PER_REQUEST`` per teacher request;
- **docs**: questions that each chunk of some documents answers (``feedback.distill.documents``); the chunk
  is kept in every pair's ``origin``;
- **paraphrase**: other wordings of each approved correction's question, sharing its answer and key
  facts; ``origin["parent_lineage_id"]`` keeps them on their parent's side of the dataset split.

Every pair becomes a ``Correction`` (source synthetic, status submitted, authored by whoever started
the run), so it waits in the approvals queue for a second person. With
``settings.distill_auto_approve_paraphrases`` paraphrases of approved corrections are approved on
arrival instead (audited). A question that is a near-duplicate (``settings.duplicate_question_threshold``)
of another pair or of an approved, submitted or draft correction is dropped and counted; a paraphrase
only has to differ from its own parent and siblings (``feedback.corrections.similarity.QuestionIndex``).

Cost first: ``plan_*`` (``feedback.distill.plan``) estimate tokens and cost without calling the
teacher. ``execute_run`` checks the budget before each request and caps the request's ``max_tokens`` to
what is left. Each reply is stored in one transaction with the run's counters and progress, so a run
stopped anywhere (Ctrl-C, a crash, the budget, a teacher outage) continues with ``execute_run`` and
never stores a pair twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine.embeddings import embed
from feedback.corrections.models import Correction, CorrectionSource, CorrectionStatus
from feedback.corrections.service import create_correction
from feedback.corrections.similarity import QuestionIndex
from feedback.distill.models import DistillKind, DistillRun, DistillStatus
from feedback.distill.plan import RECENT_QUESTIONS, DistillPlan, TeacherRequest, cost, next_request, within_budget
from feedback.distill.teacher import Teacher, TeacherConfig, TeacherError, TeacherReply, json_items
from feedback.errors import FeedbackConflictError, FeedbackError, FeedbackNotFoundError
from tuneloop.core.accounts.service import audit
from tuneloop.core.db import session_scope
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings


# --- runs ----------------------------------------------------------------------------------------
def create_run(session: Session, plan: DistillPlan, *, actor: str) -> DistillRun:
    """Record a confirmed plan as a pending run; ``execute_run`` does the work."""
    params = {**plan.params, "budget": plan.budget,
              "teacher": {"model": plan.teacher.model, "base_url": plan.teacher.base_url}}
    run = DistillRun(kind=plan.kind, params=params, requested=plan.requested, estimated_tokens=plan.estimated_tokens,
                     estimated_cost=plan.estimated_cost, created_by=actor)
    session.add(run)
    audit(session, actor=actor, action="distill.created", object_type="distillrun", object_id=run.id,
          kind=str(plan.kind), requested=plan.requested, estimated_tokens=plan.estimated_tokens)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> DistillRun:
    run = session.get(DistillRun, run_id)
    if run is None:
        raise FeedbackNotFoundError(f"no distillation run {run_id!r}; list them with `tuneloop distill runs`")
    return run


def list_runs(session: Session, *, limit: int = 50) -> list[DistillRun]:
    """Newest first."""
    return list(session.exec(select(DistillRun).order_by(col(DistillRun.created_at).desc()).limit(limit)).all())


def run_as_dict(run: DistillRun) -> dict[str, Any]:
    """The run without its bulky inputs (document chunks, target lists), which are summarised as counts."""
    params = {k: v for k, v in run.params.items() if k not in ("chunks", "targets")}
    for bulky in ("chunks", "targets"):
        if bulky in run.params:
            params[f"n_{bulky}"] = len(run.params[bulky])
    body = run.model_dump(mode="json", warnings=False, exclude={"params"})
    return {"object": "distill.run", **body, "params": params,
            "tokens_used": run.prompt_tokens + run.completion_tokens}


def progress_of(run: DistillRun) -> tuple[int, int]:
    """(done, total) for a progress bar: pairs stored of a task run, units handled of the others."""
    if run.kind == DistillKind.task:
        return run.stored, run.requested
    units = run.params.get("chunks") or run.params.get("targets") or []
    return run.progress.get("next", 0), len(units)


def execute_run(db: Engine, settings: Settings, run_id: str, *, budget: int | None = None,
                on_progress: Callable[[DistillRun], None] | None = None) -> DistillRun:
    """Start or resume a run until its work is done, the budget is reached or the teacher fails
    (``TeacherError``, the run is marked failed). Ctrl-C marks it stopped; it resumes from there.
    ``budget`` (tokens) replaces the run's budget, e.g. to continue a run stopped by it."""
    teacher = Teacher(settings)  # a missing setting fails before the run starts
    with session_scope(db) as session:
        run = _begin(session, run_id, budget)
        index = QuestionIndex.load(session, settings)
        recent = _recent_questions(session, run) if run.kind == DistillKind.task else []
    try:
        while True:
            with session_scope(db) as session:
                run = get_run(session, run_id)
                request = next_request(session, settings, run, recent)
                max_tokens = within_budget(run, request) if request else None
                if request is None or max_tokens is None:
                    return _finish(session, run, DistillStatus.completed if request is None else DistillStatus.stopped)
            reply = teacher.complete(request.messages, temperature=run.params["temperature"], max_tokens=max_tokens)
            with session_scope(db) as session:
                run = get_run(session, run_id)
                _store_reply(session, settings, run, request, reply, index, recent, teacher.config)
            if on_progress is not None:
                on_progress(run)
    except TeacherError as exc:
        _mark(db, run_id, DistillStatus.failed, f"{exc}. Resume the run once the teacher works again.")
        raise
    except BaseException:
        _mark(db, run_id, DistillStatus.stopped, "interrupted; resume the run to continue where it stopped")
        raise


def _begin(session: Session, run_id: str, budget: int | None) -> DistillRun:
    run = get_run(session, run_id)
    if run.status == DistillStatus.completed:
        raise FeedbackConflictError(f"distillation run {run.id} is already completed; start a new run for more pairs")
    if budget is not None:
        if budget < 0:
            raise FeedbackError(f"budget must be 0 (no limit) or a number of tokens, not {budget}")
        run.params = {**run.params, "budget": budget}
    run.status, run.message, run.updated_at = DistillStatus.running, "", utcnow()
    session.add(run)
    return run


def _finish(session: Session, run: DistillRun, status: DistillStatus) -> DistillRun:
    run.status, run.updated_at = status, utcnow()
    session.add(run)
    audit(session, actor=run.created_by, action=f"distill.{status}", object_type="distillrun", object_id=run.id,
          stored=run.stored, duplicates=run.duplicates, malformed=run.malformed,
          tokens=run.prompt_tokens + run.completion_tokens, message=run.message)
    return run


def _mark(db: Engine, run_id: str, status: DistillStatus, message: str) -> None:
    try:
        with session_scope(db) as session:
            run = get_run(session, run_id)
            run.message = message
            _finish(session, run, status)
    except Exception:  # the database itself may be why we stopped; the run stays "running" and resumes
        pass


# --- storing one reply -------------------------------------------------------------------------
def _store_reply(session: Session, settings: Settings, run: DistillRun, request: TeacherRequest,
                 reply: TeacherReply, index: QuestionIndex, recent: list[str], teacher: TeacherConfig) -> None:
    """Parse, deduplicate and store one reply, and advance the run, in the caller's transaction."""
    pairs, malformed = _pairs(reply.text, request.parent)
    pairs = pairs[:request.n]
    group = request.parent.lineage_id if request.parent else None
    auto_approve = request.parent is not None and settings.distill_auto_approve_paraphrases
    origin = {"kind": str(run.kind), "run_id": run.id, "temperature": run.params["temperature"],
              "teacher": {"model": teacher.model, "base_url": teacher.base_url}, **request.origin}
    stored = duplicates = 0
    for (question, answer), vector in zip(pairs, embed([q for q, _ in pairs])):
        if index.is_duplicate(vector, settings.duplicate_question_threshold, group=group):
            duplicates += 1
            continue
        index.add(vector, group)
        _store_pair(session, settings, run, question, answer, origin, request.parent, auto_approve)
        recent.append(question)
        stored += 1
    run.stored += stored
    run.duplicates += duplicates
    run.malformed += malformed
    run.prompt_tokens += reply.prompt_tokens
    run.completion_tokens += reply.completion_tokens
    run.cost = cost(settings, run.prompt_tokens, run.completion_tokens)
    run.progress, run.updated_at = dict(request.progress), utcnow()
    session.add(run)


def _pairs(text: str, parent: Correction | None) -> tuple[list[tuple[str, str]], int]:
    """Usable (question, answer) pairs and how many items (or whole replies) were malformed. A
    paraphrase reply holds strings (objects with a "question" are accepted too) and takes the parent's answer."""
    items, broken = json_items(text)
    pairs = []
    for item in items:
        fields = item if isinstance(item, dict) else {"question": item}
        question = fields.get("question")
        answer = parent.answer if parent is not None else fields.get("answer")
        if isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip():
            pairs.append((question.strip(), answer.strip()))
    return pairs, len(items) - len(pairs) + int(broken)


def _store_pair(session: Session, settings: Settings, run: DistillRun, question: str, answer: str,
                origin: dict[str, Any], parent: Correction | None, auto_approve: bool) -> Correction:
    status = CorrectionStatus.approved if auto_approve else CorrectionStatus.submitted
    correction = create_correction(session, settings, actor=run.created_by, question=question, answer=answer,
                                   key_facts=parent.key_facts if parent else (), source=CorrectionSource.synthetic,
                                   status=status, origin=origin)
    if auto_approve:
        correction.reviewer = "auto:distill_auto_approve_paraphrases"
        session.add(correction)
        audit(session, actor=run.created_by, action="correction.auto_approved", object_type="correction",
              object_id=correction.id, setting="distill_auto_approve_paraphrases", parent=parent.id, run_id=run.id)
    return correction


def _recent_questions(session: Session, run: DistillRun) -> list[str]:
    """The latest questions this run already stored (a resumed run tells the teacher not to repeat them)."""
    rows = session.exec(select(Correction).where(Correction.source == CorrectionSource.synthetic,
                                                 Correction.created_at >= run.created_at)
                        .order_by(col(Correction.created_at))).all()
    return [c.question for c in rows if c.origin.get("run_id") == run.id][-RECENT_QUESTIONS:]
