"""The chat API as OpenAI clients see it: exact response shapes, streaming with usage, models,
concurrent chats, and every turn stored with the version that answered; conversations and ratings."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import Session, select

from bot.models import Conversation, Message
from feedback.ratings.models import Rating

QUESTION = [{"role": "user", "content": "Do you ship to Canada?"}]


def _chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": QUESTION,
                                                     "max_tokens": 8, **body})


def test_completion_has_openai_shape_and_is_stored(client, tiny_app):
    response = _chat(client, user="cust-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                          "conversation_id", "message_id", "memory_correction_ids", "memory_outcome",
                          "conversation_token"]
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "tuneloop"
    assert body["system_fingerprint"] == "fp_tuneloop_v0"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    with Session(tiny_app.state.db) as session:
        conversation = session.get(Conversation, body["conversation_id"])
        assert conversation.end_user == "cust-1" and conversation.title == "Do you ship to Canada?"
        messages = session.exec(select(Message).order_by(Message.position)).all()
    assert [(m.position, m.role) for m in messages] == [(0, "user"), (1, "assistant")]
    answer = messages[1]
    assert answer.id == body["message_id"] and answer.content == choice["message"]["content"]
    assert answer.model_version_id == "v0" and answer.finish_reason == choice["finish_reason"]
    assert (answer.prompt_tokens, answer.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert answer.latency_ms is not None and answer.latency_ms >= 0


def test_openai_client_streams_with_usage_and_matches_non_streaming(openai_client, client):
    full = openai_client.chat.completions.create(model="tuneloop", messages=QUESTION, max_tokens=10)
    stream = openai_client.chat.completions.create(model="tuneloop", messages=QUESTION, max_tokens=10,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content  # greedy: same answer either way
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])

    raw = client.post("/v1/chat/completions", json={"model": "tuneloop", "messages": QUESTION, "max_tokens": 3,
                                                    "stream": True})
    lines = [line for line in raw.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]" and raw.headers["content-type"].startswith("text/event-stream")
    assert all(json.loads(line[6:])["choices"] for line in lines[:-1])  # no usage chunk unless asked
    first = json.loads(lines[0][6:])
    detail = client.get(f"/v1/conversations/{first['conversation_id']}",
                        headers={"X-Conversation-Token": first["conversation_token"]}).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][1]["finish_reason"] in ("stop", "length")


def test_models_lists_alias_and_versions(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["tuneloop", "v0", "tuneloop-v0-base"]  # every name chat accepts
    assert all(m.object == "model" and m.owned_by == "tuneloop" and m.created > 0 for m in models.data)
    assert openai_client.models.retrieve("tuneloop-v0-base").id == "tuneloop-v0-base"


def test_models_exact_shape(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and list(body["data"][0]) == ["id", "object", "created", "owned_by"]


def test_model_by_version_id_and_name(openai_client):
    for name in ("v0", "tuneloop-v0-base"):
        answer = openai_client.chat.completions.create(model=name, messages=QUESTION, max_tokens=2)
        assert answer.model == name and answer.system_fingerprint == "fp_tuneloop_v0"


def test_concurrent_chats_do_not_interleave(openai_client):
    # The tiny random model answers every question greedily with the same newlines, so each chat samples
    # with its own seed instead: distinct, reproducible answers that would show any interleaving.
    requests = [(f"Where is my order {i * 37}?", i) for i in range(6)]

    def ask(request):
        question, seed = request
        return openai_client.chat.completions.create(
            model="tuneloop", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=1.0,
            seed=seed).choices[0].message.content

    def ask_streaming(request):
        question, seed = request
        stream = openai_client.chat.completions.create(
            model="tuneloop", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=1.0,
            seed=seed, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    alone = [ask(r) for r in requests]
    assert len(set(alone)) == len(alone)
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(ask, requests))
    with ThreadPoolExecutor(6) as pool:
        streamed = list(pool.map(ask_streaming, requests))
    assert together == alone
    assert streamed == alone


def test_conversation_continues_with_full_or_partial_history(client, tiny_app):
    first = _chat(client).json()
    cid, answer = first["conversation_id"], first["choices"][0]["message"]["content"]
    token = first["conversation_token"]  # no API key: the conversation's secret, handed out once
    history = [*QUESTION, {"role": "assistant", "content": answer}, {"role": "user", "content": "How long?"}]
    second = _chat(client, messages=history, conversation_id=cid, conversation_token=token).json()  # full history
    third = _chat(client, messages=[{"role": "user", "content": "Thanks!"}], conversation_id=cid,
                  conversation_token=token).json()
    assert second["conversation_id"] == third["conversation_id"] == cid
    assert second["conversation_token"] is None and third["conversation_token"] is None
    detail = client.get(f"/v1/conversations/{cid}", headers={"X-Conversation-Token": token}).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "Do you ship to Canada?"), ("assistant", answer), ("user", "How long?"),
        ("assistant", second["choices"][0]["message"]["content"]), ("user", "Thanks!"),
        ("assistant", third["choices"][0]["message"]["content"]),
    ]
    # The stored history is the prompt: the third turn's prompt holds all five earlier messages.
    assert third["usage"]["prompt_tokens"] > second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    with Session(tiny_app.state.db) as session:
        assert len(session.exec(select(Conversation)).all()) == 1


def test_created_conversation_is_used_and_listed_newest_first(client, tiny_app):
    from tuneloop.core.accounts import service as accounts
    from tuneloop.core.accounts.models import Account

    created = client.post("/v1/conversations", json={"user": "cust-9", "title": "Returns"})
    assert created.status_code == 201 and created.json()["object"] == "conversation"
    cid = created.json()["id"]
    _chat(client, conversation_id=cid, conversation_token=created.json()["conversation_token"])
    ids = [cid] + [_chat(client).json()["conversation_id"] for _ in range(3)]

    with Session(tiny_app.state.db) as session:
        admin = session.exec(select(Account)).first()
        _, key = accounts.create_api_key(session, admin, "test")
        session.commit()
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/conversations").status_code == 401
    page1 = client.get("/v1/conversations?limit=3", headers=auth).json()
    page2 = client.get(f"/v1/conversations?limit=3&after={page1['last_id']}", headers=auth).json()
    assert page1["has_more"] is True and page2["has_more"] is False
    assert [c["id"] for c in page1["data"] + page2["data"]] == ids[::-1]
    assert page2["data"][0]["end_user"] == "cust-9" and page2["data"][0]["title"] == "Returns"
    mine = client.get("/v1/conversations?user=cust-9", headers=auth).json()
    assert [c["id"] for c in mine["data"]] == [cid]


def test_rating_stored_with_version_and_updated_on_rerate(client, tiny_app):
    answer = _chat(client).json()
    url = f"/v1/messages/{answer['message_id']}/rating"
    first = client.post(url, json={"value": "down", "comment": "wrong", "rater": "cust-1"})
    assert first.status_code == 200, first.text
    assert first.json()["value"] == -1 and first.json()["model_version_id"] == "v0"
    again = client.post(url, json={"value": 1, "rater": "cust-1"})
    other = client.post(url, json={"value": "up"})
    assert again.json()["id"] == first.json()["id"] and other.json()["rater"] == "anonymous"
    with Session(tiny_app.state.db) as session:
        rows = session.exec(select(Rating).order_by(Rating.rater)).all()
    assert [(r.rater, r.value, r.comment, r.model_version_id) for r in rows] == [
        ("anonymous", 1, "", "v0"), ("cust-1", 1, "", "v0")]


def test_health_and_readiness(client, tiny_app):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "v0"
