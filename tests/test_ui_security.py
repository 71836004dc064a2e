"""The signed-in pages: user text is shown as text, CSP and X-Frame-Options on /staff and /admin,
and /staff, /admin (as the README writes them) redirect to the pages."""

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


def test_the_public_chat_is_not_given_the_staff_headers(ui_client):
    assert "x-frame-options" not in ui_client.get("/").headers


@pytest.mark.parametrize("payload", PAYLOADS)
def test_user_text_is_escaped_for_markdown_and_html(payload):
    from markdown_it import MarkdownIt

    from ui.text import as_text

    rendered = MarkdownIt("commonmark").render(as_text(payload))
    assert "<img" not in rendered and "<svg" not in rendered and "<a " not in rendered
    assert "attacker.example" in rendered  # still readable, as text
