"""A conversation belongs to whoever started it (bot.ownership): the account of the API key that started
it, or, without a key, the holder of the token its first answer returned. Anyone else gets the 404 of an
id that does not exist, for reading and for continuing it; staff see every conversation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from bot.models import Message
from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role

CARD = [{"role": "user", "content": "My card is 4111 1111 1111 1111, why was it charged twice?"}]


@pytest.fixture
def http(sqlite_tiny_app):
    with TestClient(sqlite_tiny_app) as client:
        yield client


def _key(app, username: str, role: Role) -> dict[str, str]:
    with Session(app.state.db, expire_on_commit=False) as session:
        account = accounts.create_account(session, username=username, password="password-123", role=role)
        session.flush()
        _record, key = accounts.create_api_key(session, account, "test")
        session.commit()
    return {"Authorization": f"Bearer {key}"}


def _chat(http, headers=None, **body):
    return http.post("/v1/chat/completions", headers=headers or {},
                     json={"model": "tuneloop", "messages": CARD, "max_tokens": 3, **body})


def _messages(app) -> int:
    with Session(app.state.db) as session:
        return session.exec(select(func.count()).select_from(Message)).one()


def _assert_not_found(response, conversation_id: str) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["param"] == "conversation_id" and conversation_id in error["message"]


def test_an_anonymous_conversation_opens_only_with_its_token(http, sqlite_tiny_app):
    first = _chat(http).json()
    cid, token = first["conversation_id"], first["conversation_token"]
    assert token.startswith("convtok-")

    _assert_not_found(http.get(f"/v1/conversations/{cid}"), cid)
    _assert_not_found(http.get(f"/v1/conversations/{cid}", headers={"X-Conversation-Token": "convtok-guess"}), cid)
    before = _messages(sqlite_tiny_app)
    _assert_not_found(_chat(http, conversation_id=cid), cid)  # appending without the token
    _assert_not_found(_chat(http, conversation_id=cid, conversation_token="convtok-guess", stream=True), cid)
    assert _messages(sqlite_tiny_app) == before

    assert _chat(http, conversation_id=cid, conversation_token=token).status_code == 200
    detail = http.get(f"/v1/conversations/{cid}", headers={"X-Conversation-Token": token})
    assert detail.status_code == 200 and len(detail.json()["messages"]) == 4


def test_a_keyed_conversation_is_its_accounts_and_staffs(http, sqlite_tiny_app):
    """The issue's reproducer: a conversation started with an admin key, a card number in it, was readable
    with no credentials, and an anonymous chat could append to it."""
    admin, staff = _key(sqlite_tiny_app, "boss", Role.admin), _key(sqlite_tiny_app, "agent", Role.staff)
    app_a, app_b = _key(sqlite_tiny_app, "shop-a", Role.user), _key(sqlite_tiny_app, "shop-b", Role.user)

    by_admin = _chat(http, admin).json()
    assert by_admin["conversation_token"] is None  # a keyed conversation needs no token
    cid = by_admin["conversation_id"]
    _assert_not_found(http.get(f"/v1/conversations/{cid}"), cid)
    _assert_not_found(_chat(http, conversation_id=cid), cid)
    assert http.get(f"/v1/conversations/{cid}", headers=staff).status_code == 200

    mine = _chat(http, app_a).json()["conversation_id"]
    for other in ({}, app_b):
        _assert_not_found(http.get(f"/v1/conversations/{mine}", headers=other), mine)
        _assert_not_found(_chat(http, other, conversation_id=mine), mine)
    assert _chat(http, app_a, conversation_id=mine).status_code == 200
    assert http.get(f"/v1/conversations/{mine}", headers=app_a).status_code == 200
    assert _chat(http, staff, conversation_id=mine).status_code == 200  # staff may continue one, as review does


def test_a_created_conversation_has_an_owner_too(http, sqlite_tiny_app):
    shop = _key(sqlite_tiny_app, "shop", Role.user)
    anonymous = http.post("/v1/conversations", json={"title": "Returns"}).json()
    keyed = http.post("/v1/conversations", json={"title": "Returns"}, headers=shop).json()
    assert anonymous["conversation_token"].startswith("convtok-") and keyed["conversation_token"] is None

    _assert_not_found(http.get(f"/v1/conversations/{anonymous['id']}"), anonymous["id"])
    _assert_not_found(http.get(f"/v1/conversations/{keyed['id']}"), keyed["id"])
    assert http.get(f"/v1/conversations/{keyed['id']}", headers=shop).status_code == 200
    assert http.get(f"/v1/conversations/{anonymous['id']}",
                    headers={"X-Conversation-Token": anonymous["conversation_token"]}).status_code == 200
