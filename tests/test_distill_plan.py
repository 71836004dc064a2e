"""Distillation, what a run asks for and what it keeps: the estimates, the prompts and work list of task,
document and paraphrase runs, deduplication against other pairs and approved data, malformed teacher
output and bad input; against the scripted teacher (tests/support/distill.py)."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from support.distill import DESCRIPTION, NEAR, PARAPHRASES, QUESTIONS, add_approved, pairs, start, synthetic
from support.distill import engine, settings, teacher, teacher_url  # noqa: F401  (fixtures)
from feedback.distill import service as distill, plan as distill_plan
from feedback.corrections.service import approve_correction, list_corrections
from feedback.errors import FeedbackConflictError, FeedbackError
from feedback.corrections.models import CorrectionStatus
from feedback.distill.models import DistillStatus
from tuneloop.core.db import session_scope


# --- task runs -------------------------------------------------------------------------------------
def test_task_run_counts_dedups_and_leaves_pairs_pending(database_url, engine, settings, teacher):
    add_approved(engine, settings, "Can I cancel my order?", "Yes, until it ships.")
    batch = QUESTIONS[:8] + [NEAR["Do you ship to Canada?"]]
    first = json.loads(pairs(batch)) + [{"question": "What about gloves?"}]  # no answer: malformed
    teacher.script(json.dumps(first),
                   "Sorry, I cannot help with that.",  # not JSON at all: malformed
                   pairs([NEAR["Can I cancel my order?"], *QUESTIONS[8:11]]),  # one duplicates approved data
                   "```json\n" + pairs(QUESTIONS[11:12]) + "\n```")
    plan = distill_plan.plan_task(settings, description=DESCRIPTION, count=12, temperature=0.7)
    assert plan.requested == 12 and plan.requests == 2 and plan.estimated_tokens > 12 * distill_plan.TOKENS_PER_PAIR
    assert plan.estimated_cost is not None and "big-teacher" in plan.summary()

    run = distill.execute_run(engine, settings, start(engine, plan))

    assert run.status == DistillStatus.completed
    assert (run.requested, run.stored, run.duplicates, run.malformed) == (12, 12, 2, 2)
    requests = teacher.requests()
    assert len(requests) == 4 and run.progress["requests"] == 4
    assert all(r["body"]["model"] == "big-teacher" and r["body"]["temperature"] == 0.7 for r in requests)
    assert requests[0]["authorization"] == "Bearer sk-teacher"
    assert DESCRIPTION in teacher.prompts()[0] and "Do not repeat" in teacher.prompts()[1]
    assert QUESTIONS[0] in teacher.prompts()[1]
    usage_tokens = sum(len(json.dumps(r["body"]["messages"])) for r in requests)  # server counts chars // 4
    assert 0 < run.prompt_tokens <= usage_tokens and run.completion_tokens > 0
    assert run.cost == pytest.approx((run.prompt_tokens * 2 + run.completion_tokens * 8) / 1e6, abs=1e-6)

    stored = synthetic(engine)
    assert sorted(c.question for c in stored) == sorted(QUESTIONS[:12])  # neither near-duplicate stored
    assert all(c.status == CorrectionStatus.submitted and c.author == "carol" for c in stored)
    origin = stored[0].origin
    assert origin["run_id"] == run.id and origin["kind"] == "task" and origin["teacher"]["model"] == "big-teacher"
    assert DESCRIPTION in origin["prompt"]
    with Session(engine) as session:  # waiting in the approvals queue like any submitted correction
        pending, _ = list_corrections(session, status=CorrectionStatus.submitted, limit=100)
    assert {c.id for c in stored} <= {c.id for c in pending}
    with pytest.raises(FeedbackConflictError, match="already completed"):
        distill.execute_run(engine, settings, run.id)


def test_malformed_output_is_skipped_and_counted(engine, settings, teacher):
    cut_off = pairs(QUESTIONS[:3])[:-30]  # a reply cut off mid-array keeps its complete items
    teacher.script("no JSON here", json.dumps({"pairs": ["just a string", {"question": " ", "answer": "x"}]}),
                   cut_off, pairs(QUESTIONS[3:5]))
    run = distill.execute_run(engine, settings, start(engine, distill_plan.plan_task(settings, description=DESCRIPTION,
                                                                                    count=4)))
    assert run.status == DistillStatus.completed
    assert run.stored == 4 and run.malformed == 1 + 2 + 1
    assert len(synthetic(engine)) == 4


# --- documents -------------------------------------------------------------------------------------
def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica and a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer << /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_docs_run_keeps_the_source_chunk(engine, settings, teacher, tmp_path):
    guide = tmp_path / "returns.md"
    guide.write_text("# Returns\n\nBoots can be returned within 60 days.\n\n## Repairs\n\nWe fix zippers for free.\n")
    faq = tmp_path / "shipping.txt"
    faq.write_text("We ship to Canada in 5 days.")
    pdf = tmp_path / "cards.pdf"
    pdf.write_bytes(minimal_pdf("Gift cards never expire and work online."))
    teacher.script(pairs(QUESTIONS[:2]), pairs(QUESTIONS[2:4]), pairs(QUESTIONS[4:6]))

    plan = distill_plan.plan_docs(settings, [guide, faq, pdf], per_chunk=2)
    assert plan.requests == 3 and plan.requested == 6
    run = distill.execute_run(engine, settings, start(engine, plan))

    assert run.status == DistillStatus.completed and run.stored == 6
    assert "Boots can be returned within 60 days" in teacher.prompts()[0]
    assert "Gift cards never expire" in teacher.prompts()[2]
    chunks = {c.question: c.origin["source_chunk"] for c in synthetic(engine)}
    assert chunks[QUESTIONS[0]]["file"] == "returns.md" and chunks[QUESTIONS[0]]["location"] == "Returns"
    assert "We fix zippers" in chunks[QUESTIONS[0]]["text"]
    assert chunks[QUESTIONS[5]] == {"file": "cards.pdf", "index": 0, "location": "page 1",
                                    "text": "Gift cards never expire and work online."}
    assert "Excerpt" not in synthetic(engine)[0].origin["prompt"]  # the chunk is kept once, as source_chunk
    with pytest.raises(FeedbackError, match="unsupported document type '.docx'"):
        distill_plan.plan_docs(settings, [tmp_path / "policy.docx"])


# --- paraphrases -----------------------------------------------------------------------------------
def test_paraphrases_share_the_answer_and_the_parents_split(engine, settings, teacher):
    from feedback.export import training_examples
    from retrain.datasets import split_examples

    parents = [add_approved(engine, settings, q, f"Answer {i}.", key_facts=[f"fact {i}"])
               for i, q in enumerate(QUESTIONS[:6])]
    wordings = {p.id: PARAPHRASES[i] for i, p in enumerate(parents)}
    parents.sort(key=lambda p: p.lineage_id)  # the order the run asks in
    with pytest.raises(FeedbackError, match="TUNELOOP_DISTILL_PARAPHRASES_PER_CORRECTION"):
        with Session(engine) as session:
            distill_plan.plan_paraphrases(session, settings)
    on = settings.model_copy(update={"distill_paraphrases_per_correction": 2})
    for parent in parents:  # the first reply pads its parent's question: too close to count as a paraphrase
        first = f"I was wondering, {parent.question.lower()}" if parent is parents[0] else wordings[parent.id][0]
        teacher.script(json.dumps([first, wordings[parent.id][1]]))
    with Session(engine) as session:
        plan = distill_plan.plan_paraphrases(session, on)
    assert plan.requested == 12 and plan.requests == 6
    run = distill.execute_run(engine, on, start(engine, plan))

    assert (run.stored, run.duplicates) == (11, 1)
    paraphrases = synthetic(engine)
    by_lineage = {p.lineage_id: p for p in parents}
    for p in paraphrases:
        parent = by_lineage[p.origin["parent_lineage_id"]]
        assert p.status == CorrectionStatus.submitted and p.origin["parent_correction_id"] == parent.id
        assert (p.answer, p.key_facts, p.split_key) == (parent.answer, parent.key_facts, parent.lineage_id)
    with Session(engine) as session:  # the first correction lacks one paraphrase; the rest are complete
        again = distill_plan.plan_paraphrases(session, on)
    assert again.params["targets"] == [{"correction_id": parents[0].id, "lineage_id": parents[0].lineage_id,
                                        "need": 1}]

    with session_scope(engine) as session:
        for p in paraphrases:
            approve_correction(session, settings, p.id, actor="bob")
    with Session(engine) as session:
        examples = training_examples(session, settings)
    train, valid = split_examples(examples, 0.3)
    assert valid and train
    side = {e.correction_id: "valid" if e in valid else "train" for e in examples}
    for p in paraphrases:
        assert side[p.id] == side[by_lineage[p.origin["parent_lineage_id"]].id]
