"""The pages: user text is shown as text, CSP and X-Frame-Options on every page (the public chat at /
too), and /staff, /admin (as the README writes them) redirect to the pages."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

PAYLOADS = ['<img src="http://attacker.example/img.png">', '<svg onload=fetch("http://attacker.example")>',
            '<a href="http://attacker.example">click</a>', '![x](http://attacker.example/md.png)']


@pytest.fixture(scope="module")
def ui_client(tmp_path_factory):
    from tuneloop.app import create_app
    from tuneloop.core.settings import Settings

    root = tmp_path_factory.mktemp("ui")
    app = create_app(Settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'tuneloop.db'}",
                              admin_password="admin-password"), load_model=False, mount_ui=True)
    with TestClient(app, follow_redirects=False) as client:
        yield client
    app.state.db.dispose()


@pytest.mark.parametrize("page", ["/staff", "/admin"])
def test_pages_without_slash_redirect_and_send_security_headers(ui_client, page):
    moved = ui_client.get(page)
    assert moved.status_code == 307 and moved.headers["location"] == f"{page}/"
    served = ui_client.get(f"{page}/")
    assert served.status_code == 200
    assert served.headers["x-frame-options"] == "DENY"
    csp = served.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "img-src 'self' data: blob:" in csp and "connect-src 'self'" in csp


def test_the_public_chat_sends_the_same_security_headers(ui_client):
    """The probe: / sent neither header, while the staff and admin pages did."""
    served = ui_client.get("/")
    assert served.status_code == 200 and served.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in served.headers["content-security-policy"]
    assert "content-security-policy" not in ui_client.get("/docs").headers  # Swagger UI comes from a CDN


@pytest.mark.parametrize("payload", PAYLOADS)
def test_user_text_is_escaped_for_markdown_and_html(payload):
    from markdown_it import MarkdownIt

    from ui.text import as_text

    rendered = MarkdownIt("commonmark").render(as_text(payload))
    assert "<img" not in rendered and "<svg" not in rendered and "<a " not in rendered
    assert "attacker.example" in rendered  # still readable, as text


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS"])
def test_other_methods_under_v1_stay_in_the_api_envelope_with_the_ui_mounted(ui_client, method):
    """The probe: TRACE /v1/models fell through to the UI mounted at / and got {"detail": "Not Found"}."""
    answered = ui_client.request(method, "/v1/models")
    assert answered.status_code == 405 and answered.headers["allow"] == "GET"
    assert set(answered.json()["error"]) == {"message", "type", "param", "code"}
    assert f"{method} is not allowed on /v1/models" in answered.json()["error"]["message"]
