"""Planning a distillation run: what it asks the teacher and roughly what that costs, worked out
without calling the teacher (``feedback.distill`` runs the plan and stores the pairs).

``plan_*`` check the input and estimate tokens and cost up front, so a person can confirm (or refuse)
before anything is spent. A run's work list lives in its ``params``; ``next_request`` builds each
prompt from it, and ``within_budget`` caps the request's ``max_tokens`` to what is left of the budget.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from feedback.corrections.models import Correction, CorrectionStatus
from feedback.corrections.similarity import LIVE_STATUSES
from feedback.distill.documents import read_chunks
from feedback.distill.models import DistillKind, DistillRun
from feedback.distill.teacher import TeacherConfig, estimate_tokens, teacher_config
from feedback.errors import FeedbackError
from tuneloop.core.settings import Settings

PAIRS_PER_REQUEST = 10
MAX_COUNT = 1000
TOKENS_PER_PAIR = 90  # typical completion tokens of one question/answer object
TOKENS_PER_PARAPHRASE = 30
MAX_TOKENS_PER_PAIR = 200  # max_tokens headroom per pair asked for (a cut-off reply keeps its complete items)
RECENT_QUESTIONS = 20  # this run's latest questions, shown to the teacher as "do not repeat"
MAX_REQUEST_FACTOR = 3  # a task run gives up after 3x its planned requests + 2 (the teacher repeats itself)
SYSTEM_PROMPT = ("You write training data for a customer-service assistant. "
                 "Reply with a JSON array only, no other text.")
PAIRS_FORMAT = 'Reply with a JSON array of objects with the keys "question" and "answer".'


# --- plans: what a run will ask, and roughly what it will cost ------------------------------------
@dataclass
class DistillPlan:
    """A run before it starts: nothing has been sent to the teacher or stored."""

    kind: DistillKind
    params: dict[str, Any]
    requested: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float | None
    teacher: TeacherConfig
    budget: int  # tokens; 0 = no limit

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"object": "distill.estimate", "kind": str(self.kind), "requested": self.requested,
                "requests": self.requests, "estimated_prompt_tokens": self.prompt_tokens,
                "estimated_completion_tokens": self.completion_tokens, "estimated_tokens": self.estimated_tokens,
                "estimated_cost": self.estimated_cost, "budget": self.budget,
                "within_budget": not self.budget or self.estimated_tokens <= self.budget,
                "teacher": {"model": self.teacher.model, "base_url": self.teacher.base_url},
                "summary": self.summary()}

    def summary(self) -> str:
        cost = (f", about ${self.estimated_cost:.4f}" if self.estimated_cost is not None else
                " (cost unknown: set TUNELOOP_TEACHER_PRICE_PER_MILLION_INPUT_TOKENS and _OUTPUT_TOKENS)")
        requests = f"{self.requests} request" + ("s" if self.requests != 1 else "")
        lines = [f"{self.requested} question/answer pairs in {requests} to {self.teacher.describe()}.",
                 f"Estimate: ~{self.estimated_tokens:,} tokens ({self.prompt_tokens:,} prompt + "
                 f"{self.completion_tokens:,} completion){cost}."]
        if self.budget and self.estimated_tokens > self.budget:
            lines.append(f"The budget of {self.budget:,} tokens (--budget, TUNELOOP_DISTILL_MAX_TOKENS_BUDGET) stops "
                         "the run before the end; resume it with a larger budget.")
        return "\n".join(lines)


def plan_task(settings: Settings, *, description: str, count: int, temperature: float = 0.9,
              budget: int | None = None) -> DistillPlan:
    """Customer questions and ideal answers from one paragraph about the business."""
    description = (description or "").strip()
    if not description:
        raise FeedbackError("description must not be empty: describe the business in a paragraph")
    _check(count, temperature)
    requests = math.ceil(count / PAIRS_PER_REQUEST)
    base = estimate_tokens(SYSTEM_PROMPT + _task_prompt(settings, description, PAIRS_PER_REQUEST, []))
    prompt = requests * base + (requests - 1) * RECENT_QUESTIONS * 15  # later requests list earlier questions
    params = {"description": description, "count": count, "temperature": temperature}
    return _plan(settings, DistillKind.task, params, count, requests, prompt, count * TOKENS_PER_PAIR, budget)


def plan_docs(settings: Settings, paths: list[Path], *, per_chunk: int = 3, temperature: float = 0.7,
              budget: int | None = None) -> DistillPlan:
    """Questions grounded in each chunk of the documents (Markdown, text, PDF)."""
    if not 1 <= per_chunk <= PAIRS_PER_REQUEST:
        raise FeedbackError(f"per_chunk must be between 1 and {PAIRS_PER_REQUEST}, not {per_chunk}")
    chunks = [c.as_dict() for c in read_chunks(list(paths))]
    _check(len(chunks) * per_chunk, temperature, limit=MAX_COUNT * PAIRS_PER_REQUEST)
    prompt = sum(estimate_tokens(SYSTEM_PROMPT + "".join(_docs_prompt(settings, c, per_chunk))) for c in chunks)
    params = {"files": sorted({c["file"] for c in chunks}), "per_chunk": per_chunk, "temperature": temperature,
              "chunks": chunks}
    requested = len(chunks) * per_chunk
    return _plan(settings, DistillKind.docs, params, requested, len(chunks), prompt, requested * TOKENS_PER_PAIR,
                 budget)


def plan_paraphrases(session: Session, settings: Settings, *, per_correction: int | None = None,
                     temperature: float = 0.9, budget: int | None = None) -> DistillPlan:
    """Paraphrases of every approved correction's question, up to ``per_correction`` each (default
    ``settings.distill_paraphrases_per_correction``), counting those it already has."""
    k = per_correction if per_correction is not None else settings.distill_paraphrases_per_correction
    if k <= 0:
        raise FeedbackError("paraphrase augmentation is off: set TUNELOOP_DISTILL_PARAPHRASES_PER_CORRECTION "
                            "(e.g. 3) or ask for a number of paraphrases per correction")
    if k > PAIRS_PER_REQUEST:
        raise FeedbackError(f"at most {PAIRS_PER_REQUEST} paraphrases per correction, not {k}")
    live = session.exec(select(Correction).where(col(Correction.status).in_(LIVE_STATUSES))).all()
    have = Counter(c.origin.get("parent_lineage_id") for c in live if c.origin.get("parent_lineage_id"))
    parents = sorted((c for c in live if c.status == CorrectionStatus.approved and c.split_key == c.lineage_id),
                     key=lambda c: c.lineage_id)
    targets = [{"correction_id": c.id, "lineage_id": c.lineage_id, "need": k - have[c.lineage_id]}
               for c in parents if have[c.lineage_id] < k]
    if not targets:
        raise FeedbackError("nothing to paraphrase: " + (f"every approved correction already has {k} paraphrases"
                                                         if parents else "no approved corrections yet"))
    requested = sum(t["need"] for t in targets)
    _check(requested, temperature, limit=MAX_COUNT * PAIRS_PER_REQUEST)
    by_id = {c.id: c for c in parents}
    prompt = sum(estimate_tokens(SYSTEM_PROMPT + _paraphrase_prompt(by_id[t["correction_id"]], t["need"]))
                 for t in targets)
    params = {"per_correction": k, "temperature": temperature, "targets": targets}
    return _plan(settings, DistillKind.paraphrase, params, requested, len(targets), prompt,
                 requested * TOKENS_PER_PARAPHRASE, budget)


def _check(count: int, temperature: float, *, limit: int = MAX_COUNT) -> None:
    if not 1 <= count <= limit:
        raise FeedbackError(f"count must be between 1 and {limit}, not {count}")
    if not 0.0 <= temperature <= 2.0:
        raise FeedbackError(f"temperature must be between 0 and 2, not {temperature}")


def _plan(settings: Settings, kind: DistillKind, params: dict, requested: int, requests: int, prompt: int,
          completion: int, budget: int | None) -> DistillPlan:
    budget = settings.distill_max_tokens_budget if budget is None else budget
    if budget < 0:
        raise FeedbackError(f"budget must be 0 (no limit) or a number of tokens, not {budget}")
    return DistillPlan(kind, params, requested, requests, prompt, completion, cost(settings, prompt, completion),
                       teacher_config(settings), budget)


def cost(settings: Settings, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD at the configured teacher prices, or None when no price is set."""
    price_in = settings.teacher_price_per_million_input_tokens
    price_out = settings.teacher_price_per_million_output_tokens
    if not price_in and not price_out:
        return None
    return round((prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000, 6)


# --- prompts -------------------------------------------------------------------------------------
def _voice(settings: Settings) -> str:
    return f"Company: {settings.company_name or 'the company'}. Its assistant is {settings.bot_persona}."


def _task_prompt(settings: Settings, description: str, n: int, avoid: list[str]) -> str:
    lines = [_voice(settings), f"About the business: {description}", "",
             f"Write {n} different questions that real customers of this business ask, each with the ideal "
             "answer in the company's voice: accurate, friendly and brief. Cover different topics and phrasings "
             "(short and long, casual and formal)."]
    if avoid:
        lines += ["Do not repeat or reword these questions:", *(f"- {q}" for q in avoid)]
    return "\n".join([*lines, PAIRS_FORMAT])


def _docs_prompt(settings: Settings, chunk: dict[str, Any], n: int) -> tuple[str, str]:
    """The instructions (kept in each pair's origin) and the excerpt (kept as its source chunk)."""
    instructions = (f"{_voice(settings)}\nBelow is an excerpt from {chunk['file']} ({chunk['location']}). Write {n} "
                    "different questions a customer might ask that this excerpt answers, each with the answer in "
                    f"the company's voice, using only facts stated in the excerpt. {PAIRS_FORMAT}")
    return instructions, f"\n\nExcerpt:\n{chunk['text']}"


def _paraphrase_prompt(parent: Correction, n: int) -> str:
    return (f"Write {n} different ways a customer might ask this question: other words, length and tone, the "
            f"same meaning; keep every name and number.\nQuestion: {parent.question}\n(Its answer: {parent.answer})\n"
            "Reply with a JSON array of strings.")


# --- one teacher request -------------------------------------------------------------------------
@dataclass
class TeacherRequest:
    """One request of a run, built by ``next_request`` from the run's work list and progress."""

    messages: list[dict[str, str]]
    n: int  # pairs asked for
    expected_completion: int  # typical completion tokens: a request that cannot get this is not sent
    origin: dict[str, Any]  # recorded on every pair it yields (prompt, source chunk, parent)
    progress: dict[str, Any]  # the run's progress once its pairs are stored
    parent: Correction | None = None  # paraphrases: the correction whose answer they share
    prompt_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_tokens = sum(estimate_tokens(m["content"]) for m in self.messages)


def next_request(session: Session, settings: Settings, run: DistillRun, recent: list[str]) -> TeacherRequest | None:
    """The next unit of the run's work, or None when it is done (with the reason in ``run.message``)."""
    params, sent = run.params, run.progress.get("requests", 0)
    if run.kind == DistillKind.task:
        if run.stored >= run.requested:
            return None
        if sent >= math.ceil(run.requested / PAIRS_PER_REQUEST) * MAX_REQUEST_FACTOR + 2:
            run.message = (f"gave up after {sent} requests with {run.stored} of {run.requested} pairs: the teacher "
                           "kept repeating itself or writing malformed output; try another description or a higher "
                           "temperature")
            return None
        n = min(PAIRS_PER_REQUEST, run.requested - run.stored)
        prompt = _task_prompt(settings, params["description"], n, recent[-RECENT_QUESTIONS:])
        return TeacherRequest(_messages(prompt), n, n * TOKENS_PER_PAIR, {"prompt": prompt}, {"requests": sent + 1})
    position = run.progress.get("next", 0)
    if run.kind == DistillKind.docs:
        if position >= len(params["chunks"]):
            return None
        chunk, n = params["chunks"][position], params["per_chunk"]
        instructions, excerpt = _docs_prompt(settings, chunk, n)
        return TeacherRequest(_messages(instructions + excerpt), n, n * TOKENS_PER_PAIR,
                              {"prompt": instructions, "source_chunk": chunk},
                              {"next": position + 1, "requests": sent + 1})
    for position in range(position, len(params["targets"])):
        target = params["targets"][position]
        parent = session.get(Correction, target["correction_id"])
        if parent is not None and parent.status == CorrectionStatus.approved:  # else revised since: skip it
            prompt = _paraphrase_prompt(parent, target["need"])
            return TeacherRequest(_messages(prompt), target["need"], target["need"] * TOKENS_PER_PARAPHRASE,
                                  {"prompt": prompt, "parent_correction_id": parent.id,
                                   "parent_lineage_id": parent.lineage_id},
                                  {"next": position + 1, "requests": sent + 1}, parent=parent)
    return None


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def within_budget(run: DistillRun, request: TeacherRequest) -> int | None:
    """The request's max_tokens, capped to what is left of the budget; None (and the reason in
    ``run.message``) when not even a typical reply fits."""
    wanted = request.n * MAX_TOKENS_PER_PAIR + 64
    budget = run.params.get("budget") or 0
    if not budget:
        return wanted
    used = run.prompt_tokens + run.completion_tokens
    left = budget - used - request.prompt_tokens
    if left < request.expected_completion:
        run.message = (f"stopped at the token budget: {used:,} of {budget:,} tokens used and the next request needs "
                       f"about {request.prompt_tokens + request.expected_completion:,}; resume with a larger budget "
                       "(--budget or TUNELOOP_DISTILL_MAX_TOKENS_BUDGET)")
        return None
    return min(wanted, left)
