"""Every chat parameter is honoured or refused with a 400 naming it; nothing is silently ignored.
System and developer messages are both kept, in order."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from bot.models import Message
from bot.protocol import REFUSED_CHAT_PARAMETERS

USER = {"role": "user", "content": "Do you ship to Canada?"}

REFUSED = [  # response_format, tools, n and logprobs are served: test_openai_chat_features.py
    ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("audio", {"voice": "alloy", "format": "mp3"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}), ("reasoning_effort", "high"), ("verbosity", "low"),
    ("web_search_options", {}), ("service_tier", "flex"), ("metadata", {"k": "v"}),
    ("mystery_parameter", 1),
]


@pytest.mark.parametrize(("param", "value"), REFUSED, ids=[f"{p}-{i}" for i, (p, _) in enumerate(REFUSED)])
def test_parameters_that_cannot_be_honoured_are_refused_by_name(client, param, value):
    response = client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": [USER], param: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Value error" not in error["message"] and error["message"].startswith(f"{param}: ")


def test_neutral_values_of_refusable_parameters_are_accepted(client):
    neutral = {name: accepted[-1] for name, (accepted, _why) in REFUSED_CHAT_PARAMETERS.items()}
    body = {"model": "tuneloop", "messages": [USER], "max_completion_tokens": 2, "parallel_tool_calls": True,
            "prompt_cache_key": "k", "safety_identifier": "cust-9", **neutral}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_system_and_developer_messages_are_both_kept_in_order(client, tiny_app):
    system = {"role": "system", "content": "You are Acme's assistant."}
    developer = {"role": "developer", "content": "Answer in one short sentence."}
    one = client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": [system, USER], "max_tokens": 1})
    both = client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": [system, developer, USER],
                                                     "max_tokens": 1}).json()
    assert both["usage"]["prompt_tokens"] > one.json()["usage"]["prompt_tokens"] + 5
    with Session(tiny_app.state.db) as session:
        stored = session.exec(select(Message).where(Message.conversation_id == both["conversation_id"])
                              .order_by(Message.position)).all()
    assert [(m.role, m.content) for m in stored[:3]] == [("system", system["content"]),
                                                         ("system", developer["content"]), ("user", USER["content"])]
