"""Bad input gets a 4xx in OpenAI's error envelope, never a 500, and leaves no rows behind; a client
that goes away mid-stream still gets its partial answer recorded."""

from __future__ import annotations

import anyio
import pytest
from sqlmodel import Session, func, select

from bot.models import Conversation, Message
from feedback.ratings.models import Rating

USER = {"role": "user", "content": "Hello"}


def _counts(app) -> tuple[int, int, int]:
    with Session(app.state.db) as session:
        return tuple(session.exec(select(func.count()).select_from(t)).one() for t in (Conversation, Message, Rating))


BAD_REQUESTS = [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"messages": [{"role": "user", "content": 42}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": None}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "only text content parts"),
    ({"messages": [USER, {"role": "assistant", "content": "Hi"}]}, 400, "last message must come from the user"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 5000}, 400, "max_tokens=5000"),  # beyond the 2048-token context
    ({"temperature": 2.5}, 400, "temperature"),
    ({"temperature": -0.1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_p": 1.5}, 400, "top_p"),
    ({"n": 9}, 400, "less than or equal to 8"),
    ({"messages": [{"role": "user", "content": "refund " * 3000}]}, 400, "context budget"),
    ({"model": "gpt-17"}, 404, "does not exist"),
    ({"model": ""}, 404, "The model '' does not exist"),  # was served by production
    ({"conversation_id": "conv_nope"}, 404, "conv_nope"),
]


@pytest.mark.parametrize(("override", "status", "needle"), BAD_REQUESTS,
                         ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_chat_requests_are_rejected_without_writes(client, tiny_app, override, status, needle):
    before = _counts(tiny_app)
    for stream in (False, True):
        body = {"model": "tuneloop", "messages": [USER], "max_tokens": 4, "stream": stream, **override}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert needle in error["message"] and error["type"] in ("invalid_request_error", "not_found_error")
    assert _counts(tiny_app) == before


def test_text_parts_are_accepted(client):
    body = {"model": "tuneloop", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]}
    answer = client.post("/v1/chat/completions", json=body).json()
    detail = client.get(f"/v1/conversations/{answer['conversation_id']}",
                        headers={"X-Conversation-Token": answer["conversation_token"]}).json()
    assert detail["messages"][0]["content"] == "Hello"


def test_malformed_json_is_400(client, tiny_app):
    response = client.post("/v1/chat/completions", content=b'{"model": "tuneloop", "messages": [',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert _counts(tiny_app) == (0, 0, 0)


def test_bad_ratings(client, tiny_app):
    answer = client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": [USER], "max_tokens": 2}).json()
    before = _counts(tiny_app)
    with Session(tiny_app.state.db) as session:
        user_message = session.exec(select(Message).where(Message.role == "user")).one()
    unknown = client.post("/v1/messages/msg_nope/rating", json={"value": "up"})
    assert unknown.status_code == 404 and "msg_nope" in unknown.json()["error"]["message"]
    on_user = client.post(f"/v1/messages/{user_message.id}/rating", json={"value": "up"})
    assert on_user.status_code == 400 and "only assistant answers" in on_user.json()["error"]["message"]
    for value in ("meh", 0, 2, None):
        bad = client.post(f"/v1/messages/{answer['message_id']}/rating", json={"value": value})
        assert bad.status_code == 400, value
    assert _counts(tiny_app) == before


def test_model_still_loading_is_503(make_settings, tiny_model_dir, sqlite_url):
    from fastapi.testclient import TestClient

    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir), database_url=sqlite_url),
                     load_model=False, mount_ui=False)
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": [USER]})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_ready"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["missing"] == ["model: still loading"]
    app.state.db.dispose()


def test_client_disconnect_mid_stream_records_partial_answer(tiny_app):
    """Drive the ASGI app directly: the client disconnects after the first content chunk."""
    import json

    body = json.dumps({"model": "tuneloop", "messages": [USER], "max_tokens": 200, "temperature": 1.0,
                       "seed": 1, "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json"),
                                                                (b"host", b"testserver")],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    received: list[bytes] = []

    async def run():
        got_content = anyio.Event()
        sent_body = False

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await got_content.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                received.append(message["body"])
                if len(received) >= 3:  # role chunk + two content chunks
                    got_content.set()

        with anyio.fail_after(60):
            await tiny_app(scope, receive, send)

    anyio.run(run)
    assert not any(b"[DONE]" in chunk for chunk in received)
    streamed = "".join(json.loads(c.decode()[6:])["choices"][0]["delta"].get("content") or "" for c in received)
    with Session(tiny_app.state.db) as session:
        answer = session.exec(select(Message).where(Message.role == "assistant")).one()
    assert answer.finish_reason == "abort" and answer.model_version_id == "v0"
    assert answer.content.startswith(streamed) and len(answer.content) < 2000
    assert answer.completion_tokens is None
