"""Distillation against a scripted teacher in its own process (tests/teacher_server.py), reached with
the real ``openai`` client: counts, deduplication, pending synthetic corrections, resume without
duplicates, the budget, malformed output, retries, clear errors, the CLI, the API and the split."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from feedback import distill
from feedback.corrections import approve_correction, create_correction, list_corrections
from feedback.errors import ConflictError, FeedbackError, ForbiddenError
from feedback.models import Correction, CorrectionSource, CorrectionStatus, DistillRun, DistillStatus
from feedback.teacher import TeacherError
from tuneloop.accounts.models import AuditEvent
from tuneloop.db import session_scope

HERE = Path(__file__).parent
DESCRIPTION = "Acme Outdoor Gear sells hiking, camping and paddling gear in three shops and online."
QUESTIONS = [  # pairwise MiniLM similarity below 0.6: all distinct
    "How long do I have to return hiking boots?", "Do you ship to Canada?", "What sizes do your rain jackets come in?",
    "Is there a warranty on tents?", "What are your store opening hours on Sunday?", "Can I buy a gift card online?",
    "How do I clean a down sleeping bag?", "Do you offer student discounts?", "Can I rent kayaks from you?",
    "Where is my order?", "Do you price match other retailers?", "How heavy is the two-person backpacking tent?",
    "Can I change the delivery address after ordering?", "Are your climbing ropes certified?",
    "Do you repair broken zippers?", "Which payment methods do you accept?", "Is there a loyalty program?",
    "Can I pick up my online order in store?", "Do you sell fishing licences?",
    "What is the best stove for winter camping?", "Can I cancel my order?", "Do your water bottles contain BPA?",
    "How do I wax cross-country skis?", "Are dogs allowed in your shops?",
]
PARAPHRASES = [  # of QUESTIONS[0..5]: below 0.95 to their own question, below 0.45 to the others
    ["What is the return period for hiking boots?", "Until when can I send back hiking boots?"],
    ["Can I get an order delivered to Toronto?", "Is shipping to Canada possible?"],
    ["Which sizes are the rain jackets available in?", "Do you have rain jackets in XXL?"],
    ["What guarantee comes with a tent?", "If my tent breaks, is it covered?"],
    ["When do the shops open on Sundays?", "Are you open on Sunday afternoon?"],
    ["Do you sell gift vouchers on your website?", "Is it possible to order a gift card through the web shop?"],
]
NEAR = {"Do you ship to Canada?": "Do you deliver to Canada?",  # similarity 0.87 and more
        "Where is my order?": "Where's my order?", "Can I cancel my order?": "Is it possible to cancel my order?"}


def pairs(questions, answer="Yes, we can help with that.") -> str:
    return json.dumps([{"question": q, "answer": f"{answer} ({i})"} for i, q in enumerate(questions)])


class ScriptedTeacher:
    def __init__(self, url: str):
        self.url = url

    def script(self, *replies) -> None:
        """Queue replies: a string is a reply's content, a dict is passed as is (status, headers, usage)."""
        body = [r if isinstance(r, dict) else {"content": r} for r in replies]
        httpx.post(f"{self.url}/_script", json=body).raise_for_status()

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/_requests").json()

    def prompts(self) -> list[str]:
        return [r["body"]["messages"][-1]["content"] for r in self.requests()]


@pytest.fixture(scope="module")
def teacher_url():
    process = subprocess.Popen([sys.executable, str(HERE / "teacher_server.py")], stdout=subprocess.PIPE, text=True)
    try:
        port = process.stdout.readline().strip()  # printed once it listens
        assert port, "teacher server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def teacher(teacher_url):
    httpx.post(f"{teacher_url}/_reset").raise_for_status()
    return ScriptedTeacher(teacher_url)


@pytest.fixture
def settings(request, make_settings, sqlite_url, teacher_url):
    """A teacher with prices; SQLite, or both engines for tests that ask for ``database_url`` too."""
    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else sqlite_url
    return make_settings(database_url=url, teacher_base_url=f"{teacher_url}/v1", teacher_model="big-teacher",
                         teacher_api_key="sk-teacher", teacher_max_retries=2,
                         teacher_price_per_million_input_tokens=2.0, teacher_price_per_million_output_tokens=8.0)


@pytest.fixture
def engine(settings):
    from tuneloop.app import prepare_database

    engine = prepare_database(settings)
    yield engine
    engine.dispose()


def start(engine, plan, actor="carol") -> str:
    with session_scope(engine) as session:
        return distill.create_run(session, plan, actor=actor).id


def synthetic(engine) -> list[Correction]:
    with Session(engine) as session:
        return list(session.exec(select(Correction).where(Correction.source == CorrectionSource.synthetic)
                                 .order_by(Correction.created_at)).all())


def add_approved(engine, settings, question: str, answer: str, key_facts=()) -> Correction:
    with session_scope(engine) as session:
        return create_correction(session, settings, actor="alice", question=question, answer=answer,
                                 key_facts=key_facts, status=CorrectionStatus.approved)


# --- task runs -------------------------------------------------------------------------------------
def test_task_run_counts_dedups_and_leaves_pairs_pending(database_url, engine, settings, teacher):
    add_approved(engine, settings, "Can I cancel my order?", "Yes, until it ships.")
    batch = QUESTIONS[:8] + [NEAR["Do you ship to Canada?"]]
    first = json.loads(pairs(batch)) + [{"question": "What about gloves?"}]  # no answer: malformed
    teacher.script(json.dumps(first),
                   "Sorry, I cannot help with that.",  # not JSON at all: malformed
                   pairs([NEAR["Can I cancel my order?"], *QUESTIONS[8:11]]),  # one duplicates approved data
                   "```json\n" + pairs(QUESTIONS[11:12]) + "\n```")
    plan = distill.plan_task(settings, description=DESCRIPTION, count=12, temperature=0.7)
    assert plan.requested == 12 and plan.requests == 2 and plan.estimated_tokens > 12 * distill.TOKENS_PER_PAIR
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
    with pytest.raises(ConflictError, match="already completed"):
        distill.execute_run(engine, settings, run.id)


def test_only_approved_synthetic_pairs_become_training_examples(engine, settings, teacher):
    from feedback.export import training_examples

    teacher.script(pairs(QUESTIONS[:3]))
    run = distill.execute_run(engine, settings, start(engine, distill.plan_task(settings, description=DESCRIPTION,
                                                                               count=3)))
    assert run.stored == 3
    with session_scope(engine) as session:
        assert training_examples(session, settings) == []  # nothing synthetic trains without approval
        with pytest.raises(ForbiddenError, match="another staff member|own"):
            approve_correction(session, settings, synthetic(engine)[0].id, actor="carol")
    with session_scope(engine) as session:
        approved = approve_correction(session, settings, synthetic(engine)[0].id, actor="bob")
    with Session(engine) as session:
        examples = training_examples(session, settings)
    assert [e["correction_id"] for e in examples] == [approved.id]
    assert examples[0]["source"] == "synthetic" and examples[0]["completion"] == approved.answer


def test_resume_after_interruption_stores_nothing_twice(database_url, engine, settings, teacher):
    teacher.script(pairs(QUESTIONS[:10]), pairs(QUESTIONS[:2] + QUESTIONS[10:18]), pairs(QUESTIONS[18:20]))
    run_id = start(engine, distill.plan_task(settings, description=DESCRIPTION, count=20))

    def ctrl_c(_run):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.execute_run(engine, settings, run_id, on_progress=ctrl_c)
    with Session(engine) as session:
        stopped = session.get(DistillRun, run_id)
    assert stopped.status == DistillStatus.stopped and stopped.stored == 10 and "resume" in stopped.message

    run = distill.execute_run(engine, settings, run_id)  # the teacher repeats two earlier questions

    assert run.status == DistillStatus.completed and (run.stored, run.duplicates) == (20, 2)
    questions = [c.question for c in synthetic(engine)]
    assert len(questions) == len(set(questions)) == 20
    assert QUESTIONS[9] in teacher.prompts()[1]  # the resumed run told the teacher what it already has


def test_budget_stops_cleanly_and_a_larger_budget_continues(engine, settings, teacher):
    teacher.script({"content": pairs(QUESTIONS[:10]), "usage": {"prompt_tokens": 300, "completion_tokens": 1900}},
                   pairs(QUESTIONS[10:15]))
    plan = distill.plan_task(settings, description=DESCRIPTION, count=15, budget=2500)
    assert plan.as_dict()["within_budget"] is True
    run = distill.execute_run(engine, settings, start(engine, plan))

    assert run.status == DistillStatus.stopped and run.stored == 10 and "budget" in run.message
    assert run.prompt_tokens + run.completion_tokens == 2200 <= 2500
    assert len(teacher.requests()) == 1
    assert teacher.requests()[0]["body"]["max_tokens"] <= 2500
    tight = distill.plan_task(settings, description=DESCRIPTION, count=100, budget=1000)
    assert "stops the run before the end" in tight.summary() and not tight.as_dict()["within_budget"]

    run = distill.execute_run(engine, settings, run.id, budget=0)
    assert run.status == DistillStatus.completed and run.stored == 15


def test_malformed_output_is_skipped_and_counted(engine, settings, teacher):
    cut_off = pairs(QUESTIONS[:3])[:-30]  # a reply cut off mid-array keeps its complete items
    teacher.script("no JSON here", json.dumps({"pairs": ["just a string", {"question": " ", "answer": "x"}]}),
                   cut_off, pairs(QUESTIONS[3:5]))
    run = distill.execute_run(engine, settings, start(engine, distill.plan_task(settings, description=DESCRIPTION,
                                                                               count=4)))
    assert run.status == DistillStatus.completed
    assert run.stored == 4 and run.malformed == 1 + 2 + 1
    assert len(synthetic(engine)) == 4


def test_rate_limits_and_server_errors_are_retried(engine, settings, teacher):
    teacher.script({"status": 429, "message": "slow down", "headers": {"retry-after-ms": "20"}},
                   {"status": 503, "message": "overloaded", "headers": {"retry-after-ms": "20"}},
                   pairs(QUESTIONS[:2]))
    run = distill.execute_run(engine, settings, start(engine, distill.plan_task(settings, description=DESCRIPTION,
                                                                               count=2)))
    assert run.status == DistillStatus.completed and run.stored == 2
    assert len(teacher.requests()) == 3


def test_teacher_failures_give_errors_that_name_the_setting(engine, settings, teacher, make_settings):
    teacher.script(*[{"status": 429, "message": "quota", "headers": {"retry-after-ms": "10"}}] * 3)
    run_id = start(engine, distill.plan_task(settings, description=DESCRIPTION, count=2))
    with pytest.raises(TeacherError, match="still rate-limiting after 2 retries.*TUNELOOP_TEACHER_MAX_RETRIES"):
        distill.execute_run(engine, settings, run_id)
    with Session(engine) as session:
        failed = session.get(DistillRun, run_id)
    assert failed.status == DistillStatus.failed and "Resume" in failed.message and failed.stored == 0

    teacher.script({"status": 401, "message": "Incorrect API key provided"})
    with pytest.raises(TeacherError, match="refused the API key.*TUNELOOP_TEACHER_API_KEY"):
        distill.execute_run(engine, settings, run_id)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    unreachable = settings.model_copy(update={"teacher_base_url": f"http://127.0.0.1:{closed}/v1",
                                              "teacher_max_retries": 0})
    with pytest.raises(TeacherError, match=f"cannot reach the teacher at http://127.0.0.1:{closed}/v1.*"
                                           "TUNELOOP_TEACHER_BASE_URL"):
        distill.execute_run(engine, unreachable, run_id)
    with pytest.raises(TeacherError, match="TUNELOOP_TEACHER_MODEL is empty"):
        distill.plan_task(settings.model_copy(update={"teacher_model": ""}), description=DESCRIPTION, count=1)
    own = distill.plan_task(make_settings(port=8123), description=DESCRIPTION, count=1)
    assert own.teacher.own_server and own.teacher.base_url == "http://127.0.0.1:8123/v1"
    assert own.estimated_cost is None and "cost unknown" in own.summary()
    with pytest.raises(FeedbackError, match="description must not be empty"):
        distill.plan_task(settings, description=" ", count=3)


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

    plan = distill.plan_docs(settings, [guide, faq, pdf], per_chunk=2)
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
        distill.plan_docs(settings, [tmp_path / "policy.docx"])


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
            distill.plan_paraphrases(session, settings)
    on = settings.model_copy(update={"distill_paraphrases_per_correction": 2})
    for parent in parents:  # the first reply pads its parent's question: too close to count as a paraphrase
        first = f"I was wondering, {parent.question.lower()}" if parent is parents[0] else wordings[parent.id][0]
        teacher.script(json.dumps([first, wordings[parent.id][1]]))
    with Session(engine) as session:
        plan = distill.plan_paraphrases(session, on)
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
        again = distill.plan_paraphrases(session, on)
    assert again.params["targets"] == [{"correction_id": parents[0].id, "lineage_id": parents[0].lineage_id,
                                        "need": 1}]

    with session_scope(engine) as session:
        for p in paraphrases:
            approve_correction(session, settings, p.id, actor="bob")
    with Session(engine) as session:
        examples = training_examples(session, settings)
    train, valid = split_examples(examples, 0.3)
    assert valid and train
    side = {e["correction_id"]: "valid" if e in valid else "train" for e in examples}
    for p in paraphrases:
        assert side[p.id] == side[by_lineage[p.origin["parent_lineage_id"]].id]


def test_auto_approved_paraphrases_are_audited(engine, settings, teacher):
    parent = add_approved(engine, settings, QUESTIONS[0], "Within 60 days.")
    auto = settings.model_copy(update={"distill_paraphrases_per_correction": 1,
                                       "distill_auto_approve_paraphrases": True})
    teacher.script(json.dumps(["Until when can I send back hiking boots?"]))
    with Session(engine) as session:
        plan = distill.plan_paraphrases(session, auto)
    distill.execute_run(engine, auto, start(engine, plan))
    [paraphrase] = synthetic(engine)
    assert paraphrase.status == CorrectionStatus.approved and paraphrase.reviewer.startswith("auto:")
    with Session(engine) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.object_id == paraphrase.id)
                              .order_by(AuditEvent.id)).all()
    assert [e.action for e in events] == ["correction.created", "correction.auto_approved"]
    assert events[1].detail["parent"] == parent.id


# --- CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def tuneloop(cli_runner, tmp_path, teacher_url):
    """The real CLI in-process with a scripted teacher; returns (exit code, stdout, stderr)."""
    return cli_runner({"DATA_DIR": tmp_path / "cli-data", "ADMIN_PASSWORD": "admin-password",
                       "TEACHER_BASE_URL": f"{teacher_url}/v1", "TEACHER_MODEL": "big-teacher",
                       "TEACHER_MAX_RETRIES": "0"}, unset=("DATABASE_URL",))


def test_cli_estimates_asks_and_runs(tuneloop, teacher):
    code, out, _ = tuneloop("distill", "task", DESCRIPTION, "--count", "3", stdin="n\n")
    assert code == 1 and "Estimate: ~" in out and "cost unknown" in out and "Ask the teacher now?" in out
    assert teacher.requests() == []

    teacher.script(pairs(QUESTIONS[:3]))
    code, out, err = tuneloop("distill", "task", DESCRIPTION, "--count", "3", "--temperature", "0.5", "--yes")
    assert code == 0, err
    assert "3 of 3 pairs stored" in out and "wait for approval" in out
    assert teacher.requests()[0]["body"]["temperature"] == 0.5
    code, out, _ = tuneloop("distill", "runs")
    assert "task" in out and "completed" in out and "3/3" in out

    code, out, err = tuneloop("distill", "task", DESCRIPTION, "--count", "2", "--yes")  # script exhausted: 500
    assert code == 2 and "error: the teacher at" in err and "failed with 500" in err and "Traceback" not in err
    run_id = err.split("distill resume ")[1].split("`")[0]
    teacher.script(pairs(QUESTIONS[3:5]))
    code, out, err = tuneloop("distill", "resume", run_id)
    assert code == 0 and "2 of 2 pairs stored" in out
    code, _, err = tuneloop("distill", "paraphrase", "--yes")
    assert code == 2 and "error: paraphrase augmentation is off" in err


# --- API -------------------------------------------------------------------------------------------
@pytest.fixture
def api(settings):
    from fastapi.testclient import TestClient

    from tuneloop.accounts import service as accounts
    from tuneloop.accounts.models import Role
    from tuneloop.app import create_app

    app = create_app(settings, load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        staff = accounts.create_account(session, username="alice", password="password1", role=Role.staff)
        keys = {"alice": accounts.create_api_key(session, staff)[1],
                "admin": accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]}
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        yield client
    app.state.db.dispose()


def test_api_estimates_and_runs_for_admins_only(database_url, api, teacher):
    admin, body = api.as_["admin"], {"description": DESCRIPTION, "count": 3}
    for method, path in (("POST", "/v1/distill/estimate"), ("POST", "/v1/distill/runs"), ("GET", "/v1/distill/runs"),
                         ("GET", "/v1/distill/runs/distill_x"), ("POST", "/v1/distill/runs/distill_x/resume")):
        assert api.request(method, path, json=body).status_code == 401
        forbidden = api.request(method, path, json=body, headers=api.as_["alice"])
        assert forbidden.status_code == 403 and "admin role" in forbidden.json()["error"]["message"]

    estimate = api.post("/v1/distill/estimate", json=body, headers=admin).json()
    assert estimate["requested"] == 3 and estimate["estimated_tokens"] > 0 and estimate["estimated_cost"] is not None
    assert teacher.requests() == []

    teacher.script(pairs(QUESTIONS[:3]))
    started = api.post("/v1/distill/runs", json=body, headers=admin)
    assert started.status_code == 202 and started.json()["estimate"]["requested"] == 3
    run = api.get(f"/v1/distill/runs/{started.json()['id']}", headers=admin).json()  # ran in the background
    assert (run["status"], run["stored"], run["created_by"]) == ("completed", 3, "admin")
    assert run["tokens_used"] > 0 and run["params"]["teacher"]["model"] == "big-teacher"
    assert [r["id"] for r in api.get("/v1/distill/runs", headers=admin).json()["data"]] == [run["id"]]
    pending = api.get("/v1/corrections", params={"status": "submitted"}, headers=admin).json()["data"]
    assert len(pending) == 3 and all(c["source"] == "synthetic" for c in pending)

    bad = [({"description": " ", "count": 3}, 400, "description must not be empty"),
           ({"description": DESCRIPTION, "count": 0}, 400, "count"),
           ({"description": DESCRIPTION, "temperature": 3}, 400, "temperature"),
           ({"kind": "paraphrase"}, 400, "TUNELOOP_DISTILL_PARAPHRASES_PER_CORRECTION"),
           ({"kind": "docs"}, 400, "kind")]
    for payload, status, message in bad:
        response = api.post("/v1/distill/runs", json=payload, headers=admin)
        assert response.status_code == status and message in response.json()["error"]["message"], payload
    missing = api.get("/v1/distill/runs/distill_nope", headers=admin)
    assert missing.status_code == 404 and "tuneloop distill runs" in missing.json()["error"]["message"]
    done = api.post(f"/v1/distill/runs/{run['id']}/resume", headers=admin)
    assert done.status_code == 409 and "already completed" in done.json()["error"]["message"]

    failing = api.post("/v1/distill/runs", json=body, headers=admin).json()  # script exhausted: 500s
    failed = api.get(f"/v1/distill/runs/{failing['id']}", headers=admin).json()
    assert failed["status"] == "failed" and "failed with 500" in failed["message"]
    teacher.script(pairs(QUESTIONS[3:6]))
    assert api.post(f"/v1/distill/runs/{failing['id']}/resume", json={"budget": 0}, headers=admin).status_code == 202
    resumed = api.get(f"/v1/distill/runs/{failing['id']}", headers=admin).json()
    assert resumed["status"] == "completed" and resumed["stored"] == 3 and resumed["params"]["budget"] == 0
