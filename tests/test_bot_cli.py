"""`tuneloop chat` (in-process) stores the conversation and the ratings; `tuneloop models list` shows
the versions."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.models import Conversation, Message
from feedback.ratings.models import Rating


@pytest.fixture
def cli_env(monkeypatch, tiny_settings):
    from tuneloop.core.settings import get_settings

    for name, value in {"DATA_DIR": tiny_settings.data_dir, "DATABASE_URL": tiny_settings.database_url,
                        "BASE_MODEL": tiny_settings.base_model, "DTYPE": "float32", "MAX_TOKENS": 4,
                        "ADMIN_PASSWORD": "admin-password"}.items():
        monkeypatch.setenv(f"TUNELOOP_{name}", str(value))
    get_settings.cache_clear()
    yield tiny_settings
    get_settings.cache_clear()


def test_terminal_chat_streams_stores_and_rates(cli_env):
    from tuneloop.core import db
    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["chat"], input="Hi there\n/down too short\nAnd now?\n/new\nHello again\n/up\n/quit\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("bot> ") == 3 and "(rated down)" in result.output and "(new conversation)" in result.output
    engine = db.make_engine(cli_env.database_url)
    with Session(engine) as session:
        conversations = session.exec(select(Conversation).order_by(Conversation.created_at)).all()
        first = session.exec(select(Message).where(Message.conversation_id == conversations[0].id)
                             .order_by(Message.position)).all()
        ratings = session.exec(select(Rating)).all()
    engine.dispose()
    assert [c.channel for c in conversations] == ["cli", "cli"]
    assert [(m.role, m.content) for m in first if m.role == "user"] == [("user", "Hi there"), ("user", "And now?")]
    assert sorted((r.value, r.comment) for r in ratings) == [(-1, "too short"), (1, "")]
    assert next(r for r in ratings if r.value == -1).message_id == first[1].id


def test_models_list_shows_versions(cli_env):
    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()[-2:]
    assert header.split() == ["ID", "NAME", "STATUS", "PARENT", "CREATED"]
    assert row.split()[:5] == ["*", "v0", "tuneloop-v0-base", "production", "-"]
