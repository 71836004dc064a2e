"""A first start for any company: `tuneloop init` asks for the company and its published contacts and
saves them as settings; nothing of the demo company is a default; a contact in a staff-written answer
is never silently masked, and once kept the bot is trained on it instead of "[PHONE]"."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope

HOTLINE = "+44 20 7946 0958"


def test_defaults_name_no_company_and_keep_no_demo_contacts(tmp_path, monkeypatch):
    from tuneloop.core.company import company_contacts
    from tuneloop.core.settings import Settings

    monkeypatch.chdir(tmp_path)  # no .env here
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.company_name == "" and settings.pii_keep == []
    assert "Acme" not in settings.resolved_system_prompt and company_contacts(settings) == []


def test_init_asks_for_the_company_and_saves_it_as_settings(cli_runner, tmp_path, monkeypatch):
    from tuneloop.core.company import company_contacts
    from tuneloop.core.settings import Settings

    monkeypatch.chdir(tmp_path)
    run = cli_runner({"DATA_DIR": tmp_path / "data"}, unset=("COMPANY_NAME",))
    answers = "Brightwater Bikes\n\n" + HOTLINE + "\nbrightwater.example\nhttps://www.brightwater.example/shop\n"
    code, out, err = run("init", stdin=answers)
    assert code == 0, err
    assert "saved 'Brightwater Bikes'" in out
    saved = Settings(data_dir=tmp_path / "data")  # read back from ./.env, as every process does
    assert saved.company_name == "Brightwater Bikes" and saved.company_hotline == HOTLINE
    assert "for Brightwater Bikes" in saved.resolved_system_prompt
    assert company_contacts(saved) == [HOTLINE, "brightwater.example", "www.brightwater.example"]
    # Running it again with options replaces the profile and keeps other lines of .env.
    (tmp_path / ".env").write_text((tmp_path / ".env").read_text() + "TUNELOOP_PORT=9000\n")
    code, _, err = run("init", "--company", "Brightwater", "--persona", "a cheerful bike mechanic", "--hotline", "",
                       "--email-domain", "", "--website", "")
    assert code == 0, err
    again = Settings(data_dir=tmp_path / "data")
    assert again.company_name == "Brightwater" and again.port == 9000 and again.company_hotline == ""


@pytest.fixture
def new_company(make_settings, sqlite_url):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=sqlite_url, company_name="Brightwater Bikes", company_hotline="",
                                   company_email_domain="", memory_enabled=False), load_model=False, mount_ui=False)
    with session_scope(app.state.db) as session:
        keys = {name: accounts.create_api_key(session, accounts.create_account(
            session, username=name, password="password1", role=Role.staff))[1] for name in ("alice", "bob")}
    with TestClient(app) as client:
        client.as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
        client.app_ = app
        yield client
    app.state.db.dispose()


def test_a_kept_hotline_is_trained_on_never_masked(new_company):
    from retrain.datasets import create_snapshot, snapshot_dir
    from tuneloop.core.company import company_contacts

    api = new_company
    made = api.post("/v1/corrections", json={"question": "How can I reach you?", "submit": True,
                                             "answer": f"Call us at {HOTLINE}, Monday to Friday."},
                    headers=api.as_["alice"]).json()
    assert HOTLINE in made["answer"]  # not masked silently
    [found] = made["pii_masked"]
    assert (found["kind"], found["decision"], found["value"]) == ("phone", "pending", HOTLINE)
    blocked = api.post(f"/v1/corrections/{made['id']}/approve", json={"etag": made["etag"]}, headers=api.as_["bob"])
    assert blocked.status_code == 409 and "keep them as the company's or mask them" in blocked.json()["error"]["message"]
    kept = api.post(f"/v1/corrections/{made['id']}/contacts", json={"action": "keep"}, headers=api.as_["bob"]).json()
    assert kept["pii_masked"][0]["decision"] == "kept" and HOTLINE in company_contacts(api.app_.state.settings)
    approved = api.post(f"/v1/corrections/{made['id']}/approve", json={"etag": kept["etag"]}, headers=api.as_["bob"])
    assert approved.status_code == 200, approved.text
    with session_scope(api.app_.state.db) as session:
        snapshot = create_snapshot(session, api.app_.state.settings, "test")
        train = (snapshot_dir(api.app_.state.settings, snapshot) / "train.jsonl").read_text()
    assert HOTLINE in train and "[PHONE]" not in train
    # The next answer with the kept hotline is not even flagged.
    again = api.post("/v1/corrections", json={"question": "Phone?", "answer": f"Ring {HOTLINE}."},
                     headers=api.as_["alice"]).json()
    assert again["pii_masked"] == []


def test_the_admin_page_saves_the_company_for_this_process_and_in_env(make_settings, tmp_path):
    from types import SimpleNamespace

    from tuneloop.core.settings import Settings
    from ui.company import _save

    settings = make_settings(company_name="", company_hotline="")
    app = SimpleNamespace(state=SimpleNamespace(settings=settings))
    sign_in = SimpleNamespace(account=lambda request: SimpleNamespace(username="admin"))
    env_file = tmp_path / ".env"
    message = _save(app, sign_in, None, env_file, "Brightwater Bikes", "a cheerful bike mechanic", HOTLINE,
                    "brightwater.example", "")
    assert "Saved by admin" in message
    assert settings.company_name == "Brightwater Bikes" and settings.company_hotline == HOTLINE
    assert Settings(_env_file=env_file, data_dir=tmp_path).bot_persona == "a cheerful bike mechanic"
