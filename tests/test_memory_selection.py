"""Answer selection and handoff (issue 24): the serving engine scores approved answers, a logistic
selector fitted on the deployment's own data picks one or none, a question about the company that no
answer covers is handed off to staff (top of the review queue), the wrong-fact counter of the
benchmarks, and phrasing suggestions that would make the bot answer another correction's customers."""

from __future__ import annotations

import math
import shutil

import pytest
from sqlmodel import Session

from bot.models import Message
from engine.protocol import SamplingParams, VersionSpec
from feedback.corrections.service import create_correction
from feedback.memory.selection import (DEFAULT_SELECTORS, FEATURES, Candidate, candidates_from, fit, load_selectors,
                                       save_selectors, SelectorPair)
from feedback.memory.service import HANDOFF
from retrain.gates.matching import wrong_facts
from tuneloop.core.accounts.service import create_api_key, get_account
from tuneloop.core.db import session_scope
from test_engine_contract import V0
from test_memory_outcomes import approve

FACTS = [
    ("How long do I have to return an item?", "You can return unused items within 45 days of delivery."),
    ("How much is next-day delivery?", "Next-day delivery costs $14.99 when you order by 2 pm."),
    ("How much is standard shipping?", "Standard shipping costs $5.99 and takes 3 to 5 business days."),
    ("Do you rent kayaks?", "Yes, kayaks rent for $40 a day at the Boulder store."),
    ("How long is the warranty on tents?", "Tents have a lifetime warranty against manufacturing defects."),
    ("Can I pay with PayPal?", "Yes, we accept PayPal, Visa, Mastercard and American Express."),
]


def test_wrong_fact_counter_catches_a_reply_that_mixes_two_corrections():
    others = ["$5.99", "3 to 5 business days", "45 days"]
    mixed = "Next-day delivery costs $5.99 and arrives in 3 to 5 business days."
    assert wrong_facts(mixed, FACTS[1][1], others) == ["$5.99", "3 to 5 business days"]
    assert wrong_facts("It is $3 per 100 pounds.", FACTS[1][1], others) == ["$3", "100 pounds"]  # invented
    assert wrong_facts(FACTS[1][1], FACTS[1][1], others) == []
    assert wrong_facts("Next-day delivery is $14.99 if ordered before 2 pm.", FACTS[1][1], others) == []
    assert wrong_facts("I'm not sure, I've passed your question to our team.", FACTS[1][1], others) == []


def test_selector_fit_separates_right_from_wrong_and_is_stored_per_version(tmp_path):
    """Newton's logistic fit on rows where the right candidate leads on retrieval and PMI; the fit is
    stored for one version, and another version gets the defaults."""
    rows = []
    for i in range(30):
        right = candidates_from([("right", 0.6 + 0.01 * (i % 5)), ("other", 0.5)], [1.0 + 0.05 * (i % 3), 0.2])
        rows += [(right[0], True), (right[1], False)]
        uncovered = candidates_from([("a", 0.35 + 0.01 * (i % 4)), ("b", 0.33)], [0.1, 0.15])
        rows += [(c, False) for c in uncovered]
    selector = fit(rows, FEATURES)
    assert all(w > 0 for w in selector.weights[:2]), selector  # leads and scores raise the probability
    chances = [(selector.probability(c), right) for c, right in rows]
    assert min(p for p, r in chances if r) > 0.5 > max(p for p, r in chances if not r)

    pair = SelectorPair(selector, DEFAULT_SELECTORS.retrieval_only, verified_probability=0.7)
    path = save_selectors(tmp_path, "v3", pair, {"positives": 30})
    assert path.name == "v3.json" and not list(path.parent.glob("*.tmp"))  # written atomically
    loaded = load_selectors(tmp_path, "v3")
    assert loaded.with_model.weights == selector.weights and loaded.verified_probability == 0.7
    assert load_selectors(tmp_path, "v4") is DEFAULT_SELECTORS and load_selectors(tmp_path, None) is DEFAULT_SELECTORS


def test_candidates_carry_their_lead_over_the_best_other():
    first, second = candidates_from([("a", 0.8), ("b", 0.6)], [0.5, 1.5])
    assert (first.retrieval_lead, second.retrieval_lead) == (pytest.approx(0.2), pytest.approx(-0.2))
    assert (first.pmi_lead, second.pmi_lead) == (pytest.approx(-1.0), pytest.approx(1.0))
    assert candidates_from([("a", 0.8)])[0] == Candidate("a", 0.8, 0.8, 0.0, 0.0)


def test_engines_score_answers_with_the_same_weights_alike(make_settings, tiny_model_dir, tmp_path):
    """llama.cpp (float32 GGUF) and transformers give the same log-likelihood for the same answers, and
    the answers of one conversation scored together (sharing its prompt) score as scored alone."""
    from engine.llamacpp import LlamaCppEngine
    from engine.transformers_engine import TransformersEngine

    settings = make_settings(base_model=str(tiny_model_dir), gguf_quantization="F32", llamacpp_kv_cache_type="f16")
    base = shutil.copytree(tiny_model_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns("*.gguf"))
    spec_for = lambda version: VersionSpec(version.id, base)  # noqa: E731
    llama, reference = LlamaCppEngine(settings, spec_for), TransformersEngine(settings, spec_for)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": FACTS[0][0]}]
    answers = [a for _, a in FACTS[:4]]
    try:
        llama.swap(V0)
        reference.swap(V0)
        ours = llama.score_answers(V0, [conversation] * 4, answers)
        theirs = reference.score_answers(V0, [conversation] * 4, answers)
        alone = [llama.score_answers(V0, [conversation], [a])[0] for a in answers]
        assert [s.tokens for s in ours] == [s.tokens for s in theirs] and all(s.tokens > 5 for s in ours)
        for a, b, c in zip(ours, theirs, alone):
            assert a.logprob < 0 and math.isclose(a.logprob, b.logprob, rel_tol=1e-3, abs_tol=1e-2), (a, b)
            assert math.isclose(a.logprob, c.logprob, rel_tol=1e-4, abs_tol=1e-3), (a, c)
        # scoring beside a running chat leaves the chat's answer as it was
        chat = llama.stream(V0, conversation, SamplingParams(max_tokens=16, repetition_ngram=0))
        llama.score_answers(V0, [conversation] * 2, answers[:2])
        assert "".join(d for d in chat if isinstance(d, str)) == \
            llama.generate(V0, conversation, SamplingParams(max_tokens=16, repetition_ngram=0)).text
    finally:
        llama.close()
        reference.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_uncovered_company_question_is_handed_off_to_the_top_of_the_review_queue(make_settings, tiny_model_dir,
                                                                                  database_url):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    # no answer can be selected with confidence (probability 1.0), none is offered in a clarifying
    # question: every shop question is handed off
    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url,
                                   memory_verified_probability=1.0, memory_clarify_enabled=False),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        approve(app, *FACTS)
        with session_scope(app.state.db) as session:
            staff_key = create_api_key(session, get_account(session, "checker"))[1]
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
            disliked = client.chat.completions.create(model="tuneloop", max_tokens=4,
                                                      messages=[{"role": "user", "content": "Hello there"}])
            http.post(f"/v1/messages/{disliked.model_extra['message_id']}/rating", json={"value": "down"})
            reply = client.chat.completions.create(
                model="tuneloop", messages=[{"role": "user", "content": "How much does express shipping cost?"}])
            assert reply.model_extra["memory_outcome"] == HANDOFF and reply.model_extra["memory_correction_ids"] == []
            assert reply.choices[0].message.content == app.state.settings.memory_handoff_reply
            queue = http.get("/v1/review/queue", headers={"Authorization": f"Bearer {staff_key}"}).json()
        assert [(i["message_id"], i["reason"]) for i in queue["data"]][:2] == [
            (reply.model_extra["message_id"], "unanswered"), (disliked.model_extra["message_id"], "thumbs_down")]
        with Session(app.state.db) as session:
            stored = session.get(Message, reply.model_extra["message_id"])
            assert stored.memory_outcome == HANDOFF and stored.memory_scores[0]["probability"] < 1.0
            assert "pmi" in stored.memory_scores[0]  # the served model scored the candidates
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_calibrate_fits_on_the_deployment_and_stores_the_selector_for_production(make_settings, tiny_model_dir,
                                                                                 database_url):
    from fastapi.testclient import TestClient

    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        alternatives = {0: ["What is your return window?", "Until when can I send something back?"],
                        1: ["What does overnight shipping cost?"], 2: ["What is the price of regular delivery?"],
                        3: ["Can I hire a kayak?"], 4: ["Are tents covered by a guarantee?"]}
        approve(app, *FACTS, alternatives=alternatives)
        with session_scope(app.state.db) as session:
            admin_key = create_api_key(session, get_account(session, "admin"))[1]
        as_admin = {"Authorization": f"Bearer {admin_key}"}
        uncovered = ["Do you sell gift cards?", "Is there a store in Denver?", "Can I change my order address?",
                     "Do you price match?", "What is the capital of France?", "Tell me a joke"]
        with TestClient(app) as http:
            for question in uncovered:  # logged questions no correction covers: the negatives
                http.post("/v1/chat/completions", json={"model": "tuneloop", "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": question}]})
            report = http.get("/v1/memory/calibration?save=true&target_precision=0.9", headers=as_admin).json()
        assert (report["positives"], report["negatives"]) == (6, 6)
        assert report["fitted"] and report["scored_by_model"] and report["saved_for"] == "v0"
        stored = app.state.runtime.memory.selectors("v0")
        assert stored.with_model.weights == tuple(report["selector"]["weights"])
        assert stored.with_model.fitted_on.startswith("6 phrasings")
        assert app.state.runtime.memory.selectors("v1") is DEFAULT_SELECTORS  # each version its own
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_suggestion_that_would_answer_another_corrections_customers_is_withheld(make_settings, database_url):
    """Accepted as a phrasing of express shipping, "How much is next-day shipping?" would pull next-day
    delivery's customers there: it is withheld, naming what it asks about. A logged question nearer to a
    disliked one waiting in the review queue (its own fact) than to the correction is withheld too. A
    plain rewording of the correction's own question is offered."""
    from bot.conversations import create_conversation
    from feedback.corrections.models import Correction
    from feedback.phrasings import PhrasingRouter, suggest_phrasings
    from feedback.ratings.models import Rating
    from tuneloop.app import prepare_database

    settings = make_settings(database_url=database_url, allow_self_approval=True)
    db = prepare_database(settings)
    with session_scope(db) as session:
        for question, answer in FACTS:
            create_correction(session, settings, actor="a", question=question, answer=answer, status="approved")
        logged = {"What does express shipping cost?": 0, "How much is next-day shipping?": 0,
                  "express shipping price to canada": 0,  # nearer to the disliked question below than to express's
                  "How much is express shipping to Canada?": -1}  # its answer got a thumbs-down: a queue item
        for text, rating in logged.items():
            conversation = create_conversation(session, title=text)
            session.add(Message(conversation_id=conversation.id, position=0, role="user", content=text))
            answer = Message(conversation_id=conversation.id, position=1, role="assistant", content="?")
            session.add(answer)
            session.flush()
            if rating:
                session.add(Rating(message_id=answer.id, value=rating))
    with session_scope(db) as session:
        draft = Correction(id="corr_draft", lineage_id="corr_draft", question="How much is express shipping?",
                           answer="Express shipping costs $24.99.", author="a", alternative_questions=[])
        router = PhrasingRouter(session, settings, draft)
        assert router.conflicts("How much is next-day shipping?") == [FACTS[1][0]]
        assert router.conflicts("What does express shipping cost?") == []
        withheld = []
        offered, _ = suggest_phrasings(session, settings, draft, sources=("logs",), withheld=withheld)
    assert [s.text for s in offered] == ["What does express shipping cost?"]
    reasons = {s.text: (s.asks_about, s.reason) for s in withheld}
    assert reasons.get("express shipping price to canada", ("", ""))[0] == "How much is express shipping to Canada?"
    if "How much is next-day shipping?" in reasons:  # when routing offers it at all, it is withheld
        assert reasons["How much is next-day shipping?"][0] == FACTS[1][0]
    db.dispose()


def test_default_selector_is_confident_on_an_exact_match_only():
    """The shipped defaults: an exact question (retrieval ≈ 1, clear lead) is verified at the default
    probability; two close candidates with no lead are not."""
    from tuneloop.core.settings import Settings

    threshold = Settings(admin_password="x" * 12).memory_verified_probability
    exact = candidates_from([("a", 0.98), ("b", 0.55)])[0]
    tie = candidates_from([("a", 0.52), ("b", 0.51)])[0]
    assert DEFAULT_SELECTORS.retrieval_only.probability(exact) >= threshold
    assert DEFAULT_SELECTORS.retrieval_only.probability(tie) < threshold


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_approved_wording_itself_is_verified_whatever_the_selector_says(make_settings, tiny_model_dir,
                                                                            database_url):
    """Staff said what answers an approved question and its accepted phrasings: asked as written (case,
    spacing and the question mark aside) it is verified even where no score could be (probability
    1.0); a rewording is still left to selection, here handed off."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=database_url,
                                   memory_verified_probability=1.0, memory_clarify_enabled=False),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        ids = approve(app, *FACTS, alternatives={1: ["What do you charge for overnight delivery?"]})
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)

            def ask(text):
                return client.chat.completions.create(model="tuneloop", max_tokens=64,
                                                      messages=[{"role": "user", "content": text}])

            for text, correction in [("how much is NEXT-DAY delivery", ids[1]),
                                     ("What do you charge for overnight delivery?", ids[1]),
                                     ("  Do you rent kayaks?? ", ids[3])]:
                reply = ask(text)
                assert reply.model_extra["memory_outcome"] == "verified", text
                assert reply.model_extra["memory_correction_ids"] == [correction]
                assert reply.choices[0].message.content == FACTS[ids.index(correction)][1]
            reworded = ask("What does it cost to get my order the next day?")
            assert reworded.model_extra["memory_outcome"] == HANDOFF
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


def test_a_wording_two_corrections_share_is_left_to_selection():
    from feedback.memory.retrieval import Entry
    from feedback.memory.service import exact_wordings

    exact = exact_wordings([Entry("a", "How much is shipping?", "x", ("What does delivery cost?",)),
                            Entry("b", "How fast is delivery?", "y", ("what does delivery cost",))])
    assert exact["how much is shipping"] == "a" and exact["how fast is delivery"] == "b"
    assert exact["what does delivery cost"] is None
