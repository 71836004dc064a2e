"""serving_backend=upstream: tuneloop relays to another OpenAI-compatible server and still logs every
turn. The upstream here is tuneloop itself serving the tiny model in a separate uvicorn process
(``support.upstream``)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from bot.models import Message
from support.upstream import serve_tiny_model

QUESTION = [{"role": "user", "content": "Can I return boots?"}]


@pytest.fixture(scope="module")
def upstream_url(tiny_model_dir, tmp_path_factory):
    yield from serve_tiny_model(tiny_model_dir, tmp_path_factory.mktemp("upstream"))


@pytest.fixture
def relay(make_settings, upstream_url, database_url):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    settings = make_settings(serving_backend="upstream", upstream_base_url=upstream_url,
                             upstream_model="tuneloop", database_url=database_url)
    app = create_app(settings, load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    with TestClient(app) as client:
        yield app, client, OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    app.state.db.dispose()


def test_upstream_answers_are_relayed_and_logged(relay, upstream_url):
    from openai import OpenAI

    app, client, ours = relay
    direct = OpenAI(base_url=upstream_url, api_key="x").chat.completions.create(
        model="tuneloop", messages=[{"role": "system", "content": app.state.settings.resolved_system_prompt},
                                    *QUESTION], max_tokens=6, temperature=1.0, seed=3)
    relayed = ours.chat.completions.create(model="tuneloop", messages=QUESTION, max_tokens=6, temperature=1.0, seed=3)
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert relayed.usage.model_dump() == direct.usage.model_dump()
    assert relayed.id.startswith("chatcmpl-") and relayed.system_fingerprint == "fp_tuneloop_v0"

    stream = ours.chat.completions.create(model="tuneloop", messages=QUESTION, max_tokens=6, temperature=1.0, seed=3,
                                          stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    assert chunks[-1].usage.total_tokens == direct.usage.total_tokens

    with Session(app.state.db) as session:
        answers = session.exec(select(Message).where(Message.role == "assistant")).all()
    assert len(answers) == 2
    assert all(a.model_version_id == "v0" and a.content == direct.choices[0].message.content
               and a.completion_tokens == direct.usage.completion_tokens for a in answers)
    assert client.get("/readyz").status_code == 200


def test_upstream_refusal_is_a_400_without_writes(relay):
    app, client, _ = relay
    response = client.post("/v1/chat/completions", json={
        "model": "tuneloop", "messages": [{"role": "user", "content": "refund " * 3000}], "max_tokens": 4})
    assert response.status_code == 400 and "context budget" in response.json()["error"]["message"]
    with Session(app.state.db) as session:
        assert session.exec(select(Message)).all() == []


def test_terminal_chat_against_a_running_server(upstream_url):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["chat", "--url", upstream_url.removesuffix("/v1"), "--max-tokens", "3"],
                                input="Hi\nMore?\n/up great\n/quit\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("bot> ") == 2 and "(rated up)" in result.output
