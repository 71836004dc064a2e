"""The two-person rule without holes (the probe's bypasses): an approval names the exact revision
read, a colleague's edit becomes the editor's own revision (which the editor cannot approve), and the
audit log says who wrote, who edited and who approved each revision."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope


@pytest.fixture
def api(make_settings, database_url):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=database_url, memory_enabled=False), load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        keys = {name: accounts.create_api_key(session, accounts.create_account(
            session, username=name, password="password1", role=Role.staff))[1] for name in ("alice", "bob", "carol")}
        keys["admin"] = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        yield client
    app.state.db.dispose()


def submitted(api, who="alice", answer="Returns within 30 days.") -> dict:
    made = api.post("/v1/corrections", json={"question": "How long do I have to return boots?", "answer": answer,
                                             "submit": True}, headers=api.as_[who])
    assert made.status_code == 201, made.text
    return made.json()


def test_approval_must_name_the_revision_read(api):
    corr = submitted(api)
    bob = api.as_["bob"]
    missing = api.post(f"/v1/corrections/{corr['id']}/approve", headers=bob)
    assert missing.status_code == 428 and "etag" in missing.json()["error"]["message"]
    read = api.get(f"/v1/corrections/{corr['id']}", headers=bob)
    assert read.headers["etag"] == f'"{read.json()["etag"]}"' and read.json()["etag"] == corr["etag"]
    approved = api.post(f"/v1/corrections/{corr['id']}/approve", headers={**bob, "If-Match": read.headers["etag"]})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"


def test_author_changing_the_text_after_the_reviewer_read_it_is_a_409(api):
    corr = submitted(api)
    bob_read = api.get(f"/v1/corrections/{corr['id']}", headers=api.as_["bob"]).json()
    edited = api.patch(f"/v1/corrections/{corr['id']}", json={"answer": "Returns within 365 days, no receipt."},
                       headers=api.as_["alice"])
    assert edited.json()["id"] == corr["id"] and edited.json()["etag"] != bob_read["etag"]  # in place, new etag
    stale = api.post(f"/v1/corrections/{corr['id']}/approve", json={"etag": bob_read["etag"]}, headers=api.as_["bob"])
    assert stale.status_code == 409 and "changed since you read it" in stale.json()["error"]["message"]
    assert api.get(f"/v1/corrections/{corr['id']}", headers=api.as_["bob"]).json()["status"] == "submitted"
    fresh = api.get(f"/v1/corrections/{corr['id']}", headers=api.as_["bob"]).json()
    approved = api.post(f"/v1/corrections/{corr['id']}/approve", json={"etag": fresh["etag"]}, headers=api.as_["bob"])
    assert approved.json()["answer"] == "Returns within 365 days, no receipt."


def test_if_match_and_a_body_etag_that_differ_are_a_400(api):
    """The probe's reproducer: If-Match stale, the body current, and the body won."""
    corr = submitted(api)
    stale = corr["etag"]
    api.patch(f"/v1/corrections/{corr['id']}", json={"answer": "Returns within 60 days."}, headers=api.as_["alice"])
    current = api.get(f"/v1/corrections/{corr['id']}", headers=api.as_["bob"]).json()["etag"]
    both = api.post(f"/v1/corrections/{corr['id']}/approve", json={"etag": current},
                    headers={**api.as_["bob"], "If-Match": f'"{stale}"'})
    assert both.status_code == 400, both.text
    error = both.json()["error"]
    assert error["param"] == "etag" and error["code"] == "etag_mismatch" and "If-Match" in error["message"]
    assert api.get(f"/v1/corrections/{corr['id']}", headers=api.as_["bob"]).json()["status"] == "submitted"
    agreeing = api.post(f"/v1/corrections/{corr['id']}/approve", json={"etag": current},
                        headers={**api.as_["bob"], "If-Match": f'W/"{current}"'})
    assert agreeing.status_code == 200 and agreeing.json()["status"] == "approved"


def test_a_colleagues_edit_is_the_editors_revision_and_the_editor_cannot_approve_it(api):
    corr = submitted(api)
    bob = api.as_["bob"]
    revised = api.patch(f"/v1/corrections/{corr['id']}", json={"answer": "Returns within 90 days."}, headers=bob)
    assert revised.status_code == 200, revised.text
    rev = revised.json()
    assert rev["id"] != corr["id"] and rev["lineage_id"] == corr["id"] and rev["revision"] == 2
    assert rev["author"] == "bob" and rev["status"] == "submitted"
    assert api.get(f"/v1/corrections/{corr['id']}", headers=bob).json()["status"] == "superseded"
    own = api.post(f"/v1/corrections/{rev['id']}/approve", json={"etag": rev["etag"]}, headers=bob)
    assert own.status_code == 403
    old = api.post(f"/v1/corrections/{corr['id']}/approve", json={"etag": corr["etag"]}, headers=bob)
    assert old.status_code == 409  # the superseded revision can no longer be approved either
    by_alice = api.post(f"/v1/corrections/{rev['id']}/approve", json={"etag": rev["etag"]}, headers=api.as_["alice"])
    assert by_alice.status_code == 200 and by_alice.json()["reviewer"] == "alice"

    trail = api.get("/v1/audit", params={"object_id": rev["id"]}, headers=api.as_["admin"]).json()["data"]
    approval = next(e for e in trail if e["action"] == "correction.approved")
    assert approval["detail"]["author"] == "alice" and approval["detail"]["editor"] == "bob"
    assert approval["detail"]["approver"] == "alice" and approval["detail"]["revision"] == 2
    assert approval["detail"]["etag"] == rev["etag"]
    revision_event = next(e for e in trail if e["action"] == "correction.revised")
    assert revision_event["actor"] == "bob" and revision_event["detail"]["previous_author"] == "alice"


def test_a_colleague_editing_a_draft_makes_a_draft_revision(api):
    draft = api.post("/v1/corrections", json={"question": "Do you ship to Canada?", "answer": "Yes."},
                     headers=api.as_["alice"]).json()
    rev = api.patch(f"/v1/corrections/{draft['id']}", json={"answer": "Yes, in 5 days."},
                    headers=api.as_["bob"]).json()
    assert rev["status"] == "draft" and rev["author"] == "bob" and rev["revision"] == 2
    assert api.post(f"/v1/corrections/{rev['id']}/submit", headers=api.as_["bob"]).status_code == 200
    assert api.post(f"/v1/corrections/{rev['id']}/approve", json={"etag": rev["etag"]},
                    headers=api.as_["carol"]).json()["status"] == "approved"
