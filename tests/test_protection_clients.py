"""Rate limits per client address for anonymous callers and made-up keys, per account for valid
keys; sign-in throttled with backoff; passwords can be changed (CLI and service)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tuneloop.core.accounts import service as accounts
from tuneloop.core.accounts.models import Role
from tuneloop.core.db import session_scope

RATING = "/v1/messages/msg_x/rating"


@pytest.fixture
def make_client(make_settings, sqlite_url):
    apps = []

    def _make(**overrides):
        from tuneloop.app import create_app

        app = create_app(make_settings(database_url=sqlite_url, **overrides), load_model=False,
                         mount_ui=overrides.pop("_ui", False) if "_ui" in overrides else False)
        apps.append(app)
        return TestClient(app)

    yield _make
    for app in apps:
        app.state.db.dispose()


def test_random_bearer_strings_share_their_address_bucket(make_client):
    client = make_client(rate_limit_per_minute=6, rate_limit_burst=3)
    statuses = [client.post(RATING, json={"value": 1}, headers={"Authorization": f"Bearer random-{i}"}).status_code
                for i in range(5)]
    assert statuses[:3].count(429) == 0 and statuses[3:] == [429, 429]
    from_elsewhere = TestClient(client.app, client=("203.0.113.9", 5000))
    assert from_elsewhere.post(RATING, json={"value": 1}).status_code != 429  # another address, another bucket


def test_a_valid_key_is_limited_per_account_not_per_address(make_client):
    client = make_client(rate_limit_per_minute=6, rate_limit_burst=2)
    with session_scope(client.app.state.db) as session:
        account = accounts.create_account(session, username="alice", password="password1", role=Role.staff)
        keys = [accounts.create_api_key(session, account)[1] for _ in range(2)]
    statuses = [client.post(RATING, json={"value": 1}, headers={"Authorization": f"Bearer {key}"}).status_code
                for key in keys + keys]
    assert statuses[2:] == [429, 429]  # two keys of one account: one bucket
    assert client.post(RATING, json={"value": 1}).status_code != 429  # the address's own bucket is untouched


def test_login_throttle_backs_off_per_address():
    from tuneloop.core.protection import LoginThrottle

    now = [100.0]
    throttle = LoginThrottle(free=3, max_delay=60, clock=lambda: now[0])
    for _ in range(2):
        throttle.record("ip:a", success=False)
    assert throttle.wait("ip:a") == 0
    throttle.record("ip:a", success=False)  # third wrong password: wait 1 s
    assert throttle.wait("ip:a") == 1 and throttle.wait("ip:b") == 0
    throttle.record("ip:a", success=False)
    throttle.record("ip:a", success=False)
    assert throttle.wait("ip:a") == 4  # doubling
    for _ in range(10):
        throttle.record("ip:a", success=False)
    assert throttle.wait("ip:a") == 60  # capped
    throttle.record("ip:a", success=True)
    assert throttle.wait("ip:a") == 0


def test_wrong_passwords_on_the_staff_sign_in_are_throttled(make_settings, sqlite_url):
    from tuneloop.app import create_app

    app = create_app(make_settings(database_url=sqlite_url, login_free_attempts=3), load_model=False)
    with TestClient(app, follow_redirects=False) as client:
        tries = [client.post("/staff/login", data={"username": "admin", "password": f"wrong-{i}"}).status_code
                 for i in range(4)]
        assert tries[:3] == [400, 400, 400] and tries[3] == 429
        limited = client.post("/staff/login", data={"username": "admin", "password": "admin-password"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "try again" in limited.json()["error"]["message"]
    app.state.db.dispose()


def test_password_change_checks_the_current_one_and_is_audited(make_settings, sqlite_url):
    from tuneloop.core.accounts.models import AuditEvent
    from tuneloop.app import prepare_database

    engine = prepare_database(make_settings(database_url=sqlite_url))
    with session_scope(engine) as session:
        accounts.create_account(session, username="alice", password="password1", role=Role.staff)
    with session_scope(engine) as session, pytest.raises(accounts.AccountError, match="current password is wrong"):
        accounts.change_password(session, "alice", "new-password", actor="alice", current_password="nope")
    with session_scope(engine) as session:
        accounts.change_password(session, "alice", "new-password", actor="alice", current_password="password1")
    with session_scope(engine) as session:
        assert accounts.authenticate_password(session, "alice", "new-password") is not None
        assert accounts.authenticate_password(session, "alice", "password1") is None
        assert session.query(AuditEvent).filter_by(action="account.password_changed").count() == 1
    engine.dispose()


def test_cli_sets_a_new_password(cli_runner, tmp_path):
    run = cli_runner({"DATA_DIR": tmp_path / "data", "ADMIN_PASSWORD": "admin-password"})
    assert run("users", "create", "bob", "--password", "password1")[0] == 0
    code, out, err = run("users", "password", "bob", stdin="brand-new-pass\nbrand-new-pass\n")
    assert code == 0 and "changed the password of bob" in out, err
    code, _, err = run("users", "password", "bob", "--password", "short")
    assert code == 2 and "at least 8 characters" in err
    code, _, err = run("users", "password", "nobody", "--password", "long-enough")
    assert code == 2 and "no account named 'nobody'" in err
