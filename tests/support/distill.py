"""Shared by the distillation tests: a scripted teacher in its own process (tests/support/teacher_server.py),
reached with the real ``openai`` client, the settings and database that point at it, and test data whose
pairwise similarities are known. Import the fixtures into a test module:
``from distill import engine, settings, teacher, teacher_url``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from feedback.distill import service as distill
from feedback.corrections.service import create_correction
from feedback.corrections.models import Correction, CorrectionSource, CorrectionStatus
from tuneloop.core.db import session_scope

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
