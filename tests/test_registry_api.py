"""The registry over HTTP: role checks on every route, promotion while customers chat (no request
fails, later answers come from the new version), rollback restores the old answers, the golden set."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlmodel import Session

from registry.models import ModelVersion, GateReport
from support.lora_adapters import RETURNS, install_adapter, memorised_adapter
from registry import lifecycle as registry
from retrain.worker import Worker
from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope

CACHE = Path(__file__).resolve().parent.parent / ".tuneloop-test-cache"


@pytest.fixture
def keys(tiny_app):
    with session_scope(tiny_app.state.db) as session:
        result = {}
        for name, role in (("boss", Role.admin), ("helper", Role.staff)):
            account = accounts.create_account(session, username=name, password="password-123", role=role)
            session.flush()
            result[role.value] = {"Authorization": f"Bearer {accounts.create_api_key(session, account)[1]}"}
    return result


@pytest.fixture
def returns_version(tiny_app, tiny_model_dir) -> str:
    """v1: the tiny model plus an adapter that knows the return window, with passing gates on record."""
    settings = tiny_app.state.settings
    path = install_adapter(memorised_adapter(tiny_model_dir, [RETURNS], CACHE), settings, "adapters/v1")
    with session_scope(tiny_app.state.db) as session:
        version = registry.register_candidate(session, settings, job=None, parent=session.get(ModelVersion, "v0"),
                                              adapter_path=path, snapshot_id=None, metrics={})
        report = GateReport(candidate_version_id=version.id, baseline_version_id="v0", passed=True)
        session.add(report)
        version.gate_report_id = report.id
        return version.id


def _ask(client, question=RETURNS[0]):
    response = client.post("/v1/chat/completions", json={"model": "tuneloop", "max_tokens": 16,
                                                         "messages": [{"role": "user", "content": question}]})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["system_fingerprint"], body["choices"][0]["message"]["content"]


WRITE_ROUTES = [
    ("post", "/v1/registry/versions/v1/promote", {}, "admin"),
    ("post", "/v1/registry/versions/v1/reject", {"reason": "no"}, "admin"),
    ("post", "/v1/registry/rollback", {"version_id": "v0"}, "admin"),
    ("delete", "/v1/registry/versions/v1", None, "admin"),
    ("post", "/v1/golden", {"question": "q", "answer": "a"}, "admin"),
    ("delete", "/v1/golden/gold_x", None, "admin"),
    ("post", "/v1/registry/versions/v1/gates", None, "staff"),
]


def test_every_route_checks_the_role(client, keys, returns_version):
    for method, path, body, role in WRITE_ROUTES:
        kwargs = {"json": body} if body is not None else {}
        response = client.request(method.upper(), path, **kwargs)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["type"] == "authentication_error"
        if role == "admin":
            response = client.request(method.upper(), path, headers=keys["staff"], **kwargs)
            assert response.status_code == 403, (path, response.text)
    for path in ("/v1/registry/versions", "/v1/registry/versions/v1", "/v1/registry/versions/v1/gate-report"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=keys["staff"]).status_code == 200
    assert client.get("/v1/golden", headers=keys["staff"]).status_code == 403
    with Session(client.app.state.db) as session:  # nothing changed
        assert session.get(ModelVersion, "v1").status == "candidate"


def test_promotion_during_chats_then_rollback(client, tiny_app, keys, returns_version):
    _, before = _ask(client)
    assert "30 days" not in before  # the base model does not know
    with ThreadPoolExecutor(max_workers=6) as pool:
        chats = [pool.submit(_ask, client) for _ in range(12)]
        promoted = client.post(f"/v1/registry/versions/{returns_version}/promote", headers=keys["admin"],
                               json={"expected_production": "v0"})
        results = [c.result() for c in chats]  # every chat succeeded (asserted in _ask)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "production" and promoted.json()["lineage"][1]["id"] == "v0"
    assert {fp for fp, _ in results} <= {"fp_tuneloop_v0", "fp_tuneloop_v1"}
    fingerprint, after = _ask(client)
    assert fingerprint == "fp_tuneloop_v1" and "30 days" in after

    again = client.post(f"/v1/registry/versions/{returns_version}/promote", headers=keys["admin"])
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"
    stale = client.post("/v1/registry/rollback", headers=keys["admin"],
                        json={"version_id": "v0", "expected_production": "v0"})
    assert stale.status_code == 409 and "production is now v1" in stale.json()["error"]["message"]

    rolled = client.post("/v1/registry/rollback", headers=keys["admin"], json={"version_id": "v0"})
    assert rolled.status_code == 200, rolled.text
    assert _ask(client) == ("fp_tuneloop_v0", before)  # the old answers are back

    listing = client.get("/v1/registry/versions?limit=1", headers=keys["staff"]).json()
    assert [v["id"] for v in listing["data"]] == ["v1"] and listing["has_more"]
    nxt = client.get("/v1/registry/versions?limit=1&after=v1", headers=keys["staff"]).json()
    assert [(v["id"], v["status"]) for v in nxt["data"]] == [("v0", "production")] and not nxt["has_more"]


def test_failed_gates_reject_delete_and_errors(client, tiny_app, keys, returns_version):
    admin = keys["admin"]
    queued = client.post(f"/v1/registry/versions/{returns_version}/gates", headers=keys["staff"])
    assert queued.status_code == 202, queued.text  # the request returns at once; the worker gates
    run = queued.json()
    assert run["object"] == "gate_run" and run["status"] == "queued" and run["version_id"] == "v1"
    again = client.post(f"/v1/registry/versions/{returns_version}/gates", headers=keys["staff"])
    assert again.json()["id"] == run["id"]  # an open run is not doubled
    on_record = client.get("/v1/registry/versions/v1/gate-report", headers=keys["staff"]).json()["id"]

    assert Worker(tiny_app.state.settings, tiny_app.state.db).run_next_gate_run() == run["id"]
    done = client.get(f"/v1/registry/gate-runs/{run['id']}", headers=keys["staff"]).json()
    assert done["status"] == "succeeded" and done["report_id"] and done["finished_at"], done
    body = client.get("/v1/registry/versions/v1/gate-report", headers=keys["staff"]).json()
    assert body["id"] == done["report_id"] != on_record
    on_disk = json.loads((tiny_app.state.settings.model_store_dir / "adapters/v1/gate_report.json").read_text())
    assert on_disk["id"] == body["id"] and on_disk["items"] == body["items"]
    assert on_disk["summary"]["inputs"]["general_sha256"] and on_disk["summary"]["inputs"]["snapshot_id"] is None
    assert body["candidate_version_id"] == "v1" and body["baseline_version_id"] == "v0"
    assert {i["gate"] for i in body["items"]} == {"general"} and set(body["gates"]) == {
        "learned", "generalises", "not_forgotten", "golden", "general"}
    stored = client.get("/v1/registry/versions/v1/gate-report", headers=keys["staff"]).json()
    assert stored["id"] == body["id"] and len(stored["items"]) == len(body["items"])

    with session_scope(tiny_app.state.db) as session:  # make the outcome deterministic: a failed report
        session.get(GateReport, body["id"]).passed = False
    refused = client.post("/v1/registry/versions/v1/promote", headers=admin, json={})
    assert refused.status_code == 400 and "reason" in refused.json()["error"]["message"]
    assert client.post("/v1/registry/versions/v1/reject", headers=admin, json={"reason": "forgets"}).status_code == 200
    gone = client.post("/v1/registry/versions/v1/promote", headers=admin, json={"reason": "anyway"})
    assert gone.status_code == 409 and "rejected" in gone.json()["error"]["message"]
    assert client.delete("/v1/registry/versions/v0", headers=admin).status_code == 409  # production
    assert client.delete("/v1/registry/versions/v1", headers=admin).status_code == 200
    assert not (tiny_app.state.settings.model_store_dir / "adapters/v1").exists()
    assert client.get("/v1/registry/versions/v9", headers=admin).status_code == 404
    assert _ask(client)[0] == "fp_tuneloop_v0"


def test_golden_set_crud(client, keys):
    admin = keys["admin"]
    created = client.post("/v1/golden", headers=admin, json={
        "question": "What is your return window?", "answer": "30 days.", "key_facts": ["30 days"]})
    assert created.status_code == 201 and created.json()["key_facts"] == ["30 days"]
    listed = client.get("/v1/golden", headers=admin).json()["data"]
    assert [g["id"] for g in listed] == [created.json()["id"]]
    assert client.delete(f"/v1/golden/{created.json()['id']}", headers=admin).status_code == 200
    assert client.delete(f"/v1/golden/{created.json()['id']}", headers=admin).status_code == 404
    assert client.post("/v1/golden", headers=admin, json={"question": "q"}).status_code == 400
