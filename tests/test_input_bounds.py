"""The probe's 500s are 400s naming the field: cursors past what the database stores, dates that
overflow in UTC, an empty message id, lone surrogates in a correction and in an anonymous chat."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tuneloop.core.accounts import service as accounts
from tuneloop.core.db import session_scope

TOO_BIG = "9223372036854775808"  # 2**63


@pytest.fixture
def api(make_settings, database_url, tiny_model_dir):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=database_url, base_model=str(tiny_model_dir), max_tokens=4,
                                   memory_enabled=False), load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    with session_scope(app.state.db) as session:
        key = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    with TestClient(app, raise_server_exceptions=False) as client:
        client.admin = {"Authorization": f"Bearer {key}"}
        yield client
    app.state.runtime.stop()
    app.state.db.dispose()


def error(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize("path", ["/v1/audit", "/v1/corrections", "/v1/review/queue"])
def test_cursor_past_the_database_range_is_a_400(api, path):
    assert error(api.get(path, params={"after": TOO_BIG}, headers=api.admin))["param"] == "after"
    assert api.get(path, params={"after": "2147483647"}, headers=api.admin).status_code == 200


def test_dates_that_overflow_in_utc_are_a_400(api):
    found = error(api.get("/v1/review/queue", params={"since": "0001-01-01T00:00:00+01:00"}, headers=api.admin))
    assert found["param"] == "since" and "out of range" in found["message"]
    found = error(api.get("/v1/review/queue", params={"until": "9999-12-31T23:59:59-01:00"}, headers=api.admin))
    assert found["param"] == "until"
    assert api.get("/v1/review/queue", params={"since": "2020-01-01T00:00:00+01:00"},
                   headers=api.admin).status_code == 200


def test_empty_message_id_means_a_knowledge_pair(api):
    created = api.post("/v1/corrections", json={"message_id": "", "question": "Do you ship to Canada?",
                                                "answer": "Yes, in 5 days."}, headers=api.admin)
    assert created.status_code == 201, created.text
    assert created.json()["message_id"] is None and created.json()["source"] == "knowledge"


def test_lone_surrogate_in_a_correction_is_a_400_naming_the_field(api):
    body = '{"question": "Do you ship\\ud800?", "answer": "Yes."}'
    found = error(api.post("/v1/corrections", content=body,
                           headers={**api.admin, "content-type": "application/json"}))
    assert found["param"] == "question" and "surrogate" in found["message"]
    paired = '{"question": "Do you ship \\ud83d\\ude9a?", "answer": "Yes."}'  # a real emoji is fine
    assert api.post("/v1/corrections", content=paired,
                    headers={**api.admin, "content-type": "application/json"}).status_code == 201


def test_lone_surrogate_in_an_anonymous_chat_is_a_400(api):
    body = '{"model": "tuneloop", "messages": [{"role": "user", "content": "hi \\udfff"}]}'
    found = error(api.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}))
    assert found["param"] == "messages.0.content"
    assert api.post("/v1/chat/completions", json={"model": "tuneloop", "messages": [
        {"role": "user", "content": "hi"}]}).status_code == 200


def test_job_seed_and_distill_budget_are_bounded(api):
    found = error(api.post("/v1/fine_tuning/jobs", json={"model": "tuneloop", "seed": 2**31},
                           headers=api.admin))
    assert found["param"] == "seed"
    found = error(api.post("/v1/distill/runs", json={"description": "a shop", "budget": 2**63}, headers=api.admin))
    assert found["param"] == "budget"


def test_lone_surrogates_in_uploaded_files_are_a_400(api):
    import io

    row = b'{"question": "Do you ship\\ud800?", "answer": "Yes."}\n'
    imported = error(api.post("/v1/corrections/import", files={"file": ("pairs.jsonl", io.BytesIO(row))},
                              headers=api.admin))
    assert "rows 1" in imported["message"] and "surrogate" in imported["message"]
    chat = b'{"messages": [{"role": "user", "content": "hi \\udc00"}, {"role": "assistant", "content": "Hello."}]}\n'
    uploaded = error(api.post("/v1/files", files={"file": ("train.jsonl", io.BytesIO(chat))},
                              data={"purpose": "fine-tune"}, headers=api.admin))
    assert uploaded["param"] == "file" and "line 1 (messages.0.content)" in uploaded["message"]
