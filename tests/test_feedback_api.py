"""The review and correction workflow over HTTP, as staff use it: roles, the queue, two-person
approval, revisions, near-duplicate conflicts, PII masking, imports and the audit log."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from bot.models import Conversation, Message
from feedback.ratings.models import Rating
from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope


@pytest.fixture
def app(make_settings, database_url):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=database_url), load_model=False, mount_ui=False)
    yield app
    app.state.db.dispose()


@pytest.fixture
def api(app):
    """A TestClient plus bearer headers for two staff members and the admin."""
    with session_scope(app.state.db) as session:
        keys = {}
        for name, role in (("alice", Role.staff), ("bob", Role.staff)):
            keys[name] = accounts.create_api_key(
                session, accounts.create_account(session, username=name, password="password1", role=role))[1]
        keys["admin"] = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        yield client


def add_conversation(app, turns: list[tuple[str, str]], ratings=(), version="v0") -> list[str]:
    """Store a conversation (role, content) and ratings [(assistant index, value, comment)]; returns message ids."""
    with session_scope(app.state.db) as session:
        conv = Conversation()
        session.add(conv)
        messages = [Message(conversation_id=conv.id, position=i, role=role, content=content,
                            model_version_id=version if role == "assistant" else None)
                    for i, (role, content) in enumerate(turns)]
        session.add_all(messages)
        session.flush()
        for index, value, comment in ratings:
            session.add(Rating(message_id=messages[index].id, value=value, comment=comment, rater=f"u{index}{value}"))
        return [m.id for m in messages]


def approve(client, correction_id: str, headers: dict):
    """Approve the revision as read: its etag from GET goes back with the approval."""
    etag = client.get(f"/v1/corrections/{correction_id}", headers=headers).json().get("etag")
    return client.post(f"/v1/corrections/{correction_id}/approve", json={"etag": etag}, headers=headers)


ROUTES = [  # (method, path, body, least role)
    ("GET", "/v1/review/queue", None, "staff"),
    ("GET", "/v1/review/items/msg_x", None, "staff"),
    ("POST", "/v1/review/items/msg_x/fine", None, "staff"),
    ("POST", "/v1/corrections", {"question": "q", "answer": "a"}, "staff"),
    ("GET", "/v1/corrections", None, "staff"),
    ("GET", "/v1/corrections/corr_x", None, "staff"),
    ("PATCH", "/v1/corrections/corr_x", {"answer": "a"}, "staff"),
    ("POST", "/v1/corrections/corr_x/submit", None, "staff"),
    ("POST", "/v1/corrections/corr_x/approve", None, "staff"),
    ("POST", "/v1/corrections/corr_x/reject", {"reason": "r"}, "staff"),
    ("POST", "/v1/corrections/import", None, "staff"),
    ("GET", "/v1/audit", None, "admin"),
    ("POST", "/v1/auth/keys", {}, "staff"),
    ("DELETE", "/v1/auth/keys/key_x", None, "staff"),
    ("POST", "/v1/accounts", {"username": "carol", "password": "password1"}, "admin"),
    ("POST", "/v1/datasets/snapshots", None, "staff"),
    ("GET", "/v1/datasets/snapshots", None, "staff"),
    ("GET", "/v1/datasets/snapshots/snap_x", None, "staff"),
]


def test_every_route_checks_the_role(api):
    for method, path, body, role in ROUTES:
        anonymous = api.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)
        assert "Authorization: Bearer" in anonymous.json()["error"]["message"]
        revoked = api.request(method, path, json=body, headers={"Authorization": "Bearer tl-not-a-real-key"})
        assert revoked.status_code == 401, (method, path)
        if role == "admin":
            forbidden = api.request(method, path, json=body, headers=api.as_["alice"])
            assert forbidden.status_code == 403, (method, path)
            assert "admin role" in forbidden.json()["error"]["message"]


def test_keys_and_accounts(api):
    created = api.post("/v1/auth/keys", json={"name": "script"}, headers=api.as_["alice"])
    assert created.status_code == 201 and created.json()["key"].startswith("tl-")
    own = {"Authorization": f"Bearer {created.json()['key']}"}
    assert api.get("/v1/corrections", headers=own).status_code == 200
    # bob cannot revoke alice's key; alice can, and the key stops working.
    assert api.delete(f"/v1/auth/keys/{created.json()['id']}", headers=api.as_["bob"]).status_code == 404
    assert api.delete(f"/v1/auth/keys/{created.json()['id']}", headers=own).status_code == 200
    assert api.get("/v1/corrections", headers=own).status_code == 401
    # Only admins create accounts; a duplicate name is a conflict, a short password a 400.
    new = api.post("/v1/accounts", json={"username": "carol", "password": "password1"}, headers=api.as_["admin"])
    assert new.status_code == 201 and new.json()["role"] == "staff"
    again = api.post("/v1/accounts", json={"username": "carol", "password": "password1"}, headers=api.as_["admin"])
    assert again.status_code == 409
    short = api.post("/v1/accounts", json={"username": "dave", "password": "short"}, headers=api.as_["admin"])
    assert short.status_code == 400 and "password" in short.json()["error"]["message"]


def test_review_queue_orders_filters_and_pages(app, api):
    fine = add_conversation(app, [("user", "hi"), ("assistant", "hello")])
    flagged = add_conversation(app, [("user", "hours?"), ("assistant", "always open"), ("user", "really?"),
                                     ("assistant", "yes")], ratings=[(1, 1, "odd answer")])
    down = add_conversation(app, [("user", "refund?"), ("assistant", "no refunds")], ratings=[(1, -1, "")], version="v1")
    staff = api.as_["alice"]
    page = api.get("/v1/review/queue", headers=staff).json()
    assert [i["message_id"] for i in page["data"]] == [down[1], flagged[1]]
    assert [i["reason"] for i in page["data"]] == ["thumbs_down", "flagged"]
    assert page["has_more"] is False
    item = page["data"][1]
    assert [t["content"] for t in item["conversation"]] == ["hours?", "always open"]  # up to the answer only
    assert item["ratings"][0]["comment"] == "odd answer"
    # Sampling every unrated answer adds the rest after the flagged ones; paging walks through them.
    first = api.get("/v1/review/queue", params={"sample_unrated": 1, "limit": 2}, headers=staff).json()
    second = api.get("/v1/review/queue", params={"sample_unrated": 1, "limit": 2, "after": first["next_after"]},
                     headers=staff).json()
    assert first["has_more"] and not second["has_more"]
    assert {i["message_id"] for i in second["data"]} == {fine[1], flagged[3]}
    assert [i["message_id"] for i in api.get("/v1/review/queue", params={"model_version_id": "v1"},
                                              headers=staff).json()["data"]] == [down[1]]
    future = api.get("/v1/review/queue", params={"since": "2999-01-01T00:00:00Z"}, headers=staff).json()
    assert future["data"] == []
    # Marking it fine takes it out of the open queue and into the "fine" view.
    assert api.post(f"/v1/review/items/{down[1]}/fine", headers=staff).json()["review_status"] == "fine"
    assert [i["message_id"] for i in api.get("/v1/review/queue", headers=staff).json()["data"]] == [flagged[1]]
    assert [i["message_id"] for i in api.get("/v1/review/queue", params={"status": "fine"},
                                              headers=staff).json()["data"]] == [down[1]]
    assert api.get("/v1/review/items/msg_nope", headers=staff).status_code == 404
    assert api.post("/v1/review/items/msg_nope/fine", headers=staff).status_code == 404


def test_two_person_approval_revisions_and_audit(app, api):
    ids = add_conversation(app, [("user", "Can I return worn boots?"), ("assistant", "No.")], ratings=[(1, -1, "")])
    alice, bob, admin = api.as_["alice"], api.as_["bob"], api.as_["admin"]
    created = api.post("/v1/corrections", json={"message_id": ids[1], "answer": "Yes, within 30 days.",
                                                "key_facts": ["30 days"]}, headers=alice)
    assert created.status_code == 201
    corr = created.json()
    assert corr["question"] == "Can I return worn boots?" and corr["status"] == "draft"
    assert corr["source"] == "conversation" and corr["key_facts"] == ["30 days"]
    assert api.get("/v1/review/queue", headers=alice).json()["data"] == []  # now "corrected"
    cid = corr["id"]
    assert approve(api, cid, bob).status_code == 409  # draft: submit first
    assert api.patch(f"/v1/corrections/{cid}", json={"answer": "Yes, within 30 days with the receipt."},
                     headers=alice).json()["id"] == cid  # draft: edited in place
    assert api.post(f"/v1/corrections/{cid}/submit", headers=alice).json()["status"] == "submitted"
    own = approve(api, cid, alice)
    assert own.status_code == 403 and "another staff member" in own.json()["error"]["message"]
    assert approve(api, cid, bob).json()["status"] == "approved"
    assert approve(api, cid, admin).status_code == 409
    assert api.post(f"/v1/corrections/{cid}/reject", json={"reason": "x"}, headers=admin).status_code == 409
    # Editing an approved correction makes revision 2; revision 1 stays the approved one until then.
    revised = api.patch(f"/v1/corrections/{cid}", json={"answer": "Yes, within 60 days."}, headers=bob).json()
    assert revised["id"] != cid and revised["lineage_id"] == cid and revised["revision"] == 2
    assert revised["status"] == "draft"
    assert api.patch(f"/v1/corrections/{cid}", json={"answer": "again"}, headers=bob).status_code == 409
    from feedback.corrections.service import approved_corrections

    with Session(app.state.db) as session:
        assert [c.id for c in approved_corrections(session)] == [cid]
    api.post(f"/v1/corrections/{revised['id']}/submit", headers=bob)
    assert approve(api, revised['id'], alice).json()["status"] == "approved"
    assert api.get(f"/v1/corrections/{cid}", headers=alice).json()["status"] == "superseded"
    with Session(app.state.db) as session:
        assert [c.answer for c in approved_corrections(session)] == ["Yes, within 60 days."]
    listed = api.get("/v1/corrections", params={"status": "approved"}, headers=alice).json()["data"]
    assert [c["id"] for c in listed] == [revised["id"]]
    trail = api.get("/v1/audit", params={"object_id": cid}, headers=admin).json()["data"]
    assert [e["action"] for e in reversed(trail)] == [
        "correction.created", "correction.edited", "correction.submitted", "correction.approved",
        "correction.superseded"]
    assert trail[1]["actor"] == "bob"  # approved by bob


def test_bad_corrections_are_refused_with_a_reason(app, api):
    alice, bob = api.as_["alice"], api.as_["bob"]
    empty = api.post("/v1/corrections", json={"question": "Shipping to Canada?", "answer": "  "}, headers=alice)
    assert empty.status_code == 400 and "answer must not be empty" in empty.json()["error"]["message"]
    unknown = api.post("/v1/corrections", json={"message_id": "msg_nope", "answer": "x"}, headers=alice)
    assert unknown.status_code == 404
    assert api.get("/v1/corrections/corr_nope", headers=alice).status_code == 404
    corr = api.post("/v1/corrections", json={"question": "Shipping to Canada?", "answer": "Yes.", "submit": True},
                    headers=alice).json()
    assert corr["source"] == "knowledge" and corr["status"] == "submitted"
    no_reason = api.post(f"/v1/corrections/{corr['id']}/reject", json={"reason": ""}, headers=bob)
    assert no_reason.status_code == 400
    rejected = api.post(f"/v1/corrections/{corr['id']}/reject", json={"reason": "We do not ship to Canada."},
                        headers=bob).json()
    assert rejected["status"] == "rejected" and rejected["review_reason"] == "We do not ship to Canada."
    assert api.patch(f"/v1/corrections/{corr['id']}", json={"answer": "No."}, headers=alice).status_code == 409


def test_self_approval_when_allowed(make_settings, sqlite_url):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=sqlite_url, allow_self_approval=True), load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        key = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {key}"}
        corr = client.post("/v1/corrections", json={"question": "q?", "answer": "a.", "submit": True},
                           headers=headers).json()
        assert approve(client, corr['id'], headers).json()["status"] == "approved"
    app.state.db.dispose()


def test_near_duplicate_with_other_numbers_is_a_conflict_and_pii_is_masked(app, api):
    alice, bob = api.as_["alice"], api.as_["bob"]
    first = api.post("/v1/corrections", json={"question": "What are your opening hours?",
                                              "answer": "We are open 9am to 5pm, Monday to Friday.", "submit": True},
                     headers=alice).json()
    approve(api, first['id'], bob)
    other = api.post("/v1/corrections", json={"question": "What are your opening hours on weekdays?",
                                              "answer": "We are open 10am to 6pm, Monday to Friday."},
                     headers=bob).json()
    submitted = api.post(f"/v1/corrections/{other['id']}/submit", headers=bob).json()
    assert submitted["has_conflict"] is True
    [match] = submitted["similar"]
    assert match["correction_id"] == first["id"] and match["question_similarity"] >= 0.8
    assert "different numbers" in match["conflict_reason"]
    assert api.get(f"/v1/corrections/{other['id']}", headers=alice).json()["similar"][0]["conflict"]
    unrelated = api.post("/v1/corrections", json={"question": "Do you sell tents?", "answer": "Yes, 20 kinds."},
                         headers=bob).json()
    assert unrelated["similar"] == [] and unrelated["has_conflict"] is False
    pii = api.post("/v1/corrections", json={"question": "My card 4111 1111 1111 1111 was charged twice",
                                            "answer": "Write to billing@acme.example and we refund it."},
                   headers=alice).json()
    assert pii["question"] == "My card [CARD] was charged twice"  # the customer's words: masked on arrival
    # A staff-written answer is not masked silently: the contact is listed for a keep/mask decision.
    assert "billing@acme.example" in pii["answer"]
    assert {(m["field"], m["kind"], m.get("decision")) for m in pii["pii_masked"]} == {
        ("question", "card", None), ("answer", "email", "pending")}
    masked = api.post(f"/v1/corrections/{pii['id']}/contacts", json={"action": "mask"}, headers=bob).json()
    assert "billing@" not in masked["answer"] and "[EMAIL]" in masked["answer"]


def test_import_is_all_or_nothing_and_size_limited(app, api, make_settings):
    alice, admin = api.as_["alice"], api.as_["admin"]
    good = "question,answer\nDo you ship abroad?,Yes to 30 countries.\nGift wrap?,Yes for 3 dollars.\n"
    files = {"file": ("pairs.csv", io.BytesIO(good.encode()), "text/csv")}
    done = api.post("/v1/corrections/import", files=files, data={"status": "submitted"}, headers=alice)
    assert done.status_code == 201 and done.json()["imported"] == 2
    assert api.post("/v1/corrections/import", files={"file": ("p.csv", io.BytesIO(good.encode()))},
                    data={"status": "approved"}, headers=alice).status_code == 403
    broken = "question,answer\nFine?,Yes.\nEmpty answer?,\n"
    bad = api.post("/v1/corrections/import", files={"file": ("p.csv", io.BytesIO(broken.encode()))}, headers=admin)
    assert bad.status_code == 400 and "rows 2" in bad.json()["error"]["message"]
    wrong_columns = api.post("/v1/corrections/import", files={"file": ("p.csv", io.BytesIO(b"questoin,reply\na,b\n"))},
                             headers=admin)
    assert wrong_columns.status_code == 400 and "rename column 'questoin'" in wrong_columns.json()["error"]["message"]
    unknown = api.post("/v1/corrections/import", files={"file": ("p.txt", io.BytesIO(b"hello"))}, headers=admin)
    assert unknown.status_code == 400 and ".csv" in unknown.json()["error"]["message"]
    fake_xlsx = api.post("/v1/corrections/import", files={"file": ("p.xlsx", io.BytesIO(b"not a zip"))}, headers=admin)
    assert fake_xlsx.status_code == 400 and "not an Excel workbook" in fake_xlsx.json()["error"]["message"]
    app.state.settings = app.state.settings.model_copy(update={"max_upload_bytes": 64})
    huge = api.post("/v1/corrections/import", files={"file": ("p.csv", io.BytesIO(good.encode() * 4))}, headers=admin)
    assert huge.status_code == 413
    total = api.get("/v1/corrections", headers=alice).json()["data"]
    assert len(total) == 2  # nothing from the refused files


def test_snapshot_routes(app, api):
    alice, bob = api.as_["alice"], api.as_["bob"]
    corr = api.post("/v1/corrections", json={"question": "Tent warranty?", "answer": "Two years.", "submit": True},
                    headers=alice).json()
    approve(api, corr['id'], bob)
    snap = api.post("/v1/datasets/snapshots", headers=alice)
    assert snap.status_code == 201 and snap.json()["id"].startswith("snap_") and snap.json()["n_train"] == 1
    assert api.post("/v1/datasets/snapshots", headers=bob).json()["id"] == snap.json()["id"]
    assert [s["id"] for s in api.get("/v1/datasets/snapshots", headers=alice).json()["data"]] == [snap.json()["id"]]
    shown = api.get(f"/v1/datasets/snapshots/{snap.json()['id']}", headers=alice).json()
    assert shown["manifest"]["examples"][0]["split"] == "train"
    assert api.get("/v1/datasets/snapshots/snap_nope", headers=alice).status_code == 404
