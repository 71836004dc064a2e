"""Helpers for the browser tests: the whole app under uvicorn on a listening socket, and headless Chromium
(the Debian build, driven by Playwright) that refuses every request leaving this machine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from support.servers import http_ok, listening_socket, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@contextmanager
def live_server(app, *, ready_timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread on a socket that already listens; yield its
    base URL once ``/readyz`` says the model is loaded."""
    import uvicorn

    sock = listening_socket()
    port = sock.getsockname()[1]
    # The browser still holds gradio's heartbeat stream when the server stops: without a bound on the
    # graceful shutdown, each browser test's teardown waited out the 30 s join below.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited before the app was ready")
        return server.started and http_ok(f"{base}/readyz")

    try:
        wait_until(ready, ready_timeout, what=f"{base}/readyz")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop within 30 s"
        sock.close()


class Browser:
    """Chromium with a fresh profile per signed-in person; every non-local request is aborted and
    recorded in ``external_requests`` (the pages must work offline)."""

    def __init__(self, playwright, profiles_dir: Path):
        self._playwright = playwright
        self._profiles_dir = profiles_dir
        self._contexts = []
        self.external_requests: list[str] = []

    def new_page(self, name: str = "default"):
        context = self._playwright.chromium.launch_persistent_context(
            user_data_dir=str(self._profiles_dir / name), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1280, "height": 900},
        )
        # a bound on waits, not a speed check: a busy 2-core machine (a training test beside it) took over 30 s
        context.set_default_timeout(90_000)
        context.route("**/*", self._guard)
        self._contexts.append(context)
        return context.pages[0] if context.pages else context.new_page()

    def _guard(self, route) -> None:
        url = route.request.url
        host = urlparse(url).hostname
        if url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            self.external_requests.append(url)
            route.abort()

    def close(self) -> None:
        for context in self._contexts:
            context.close()


def login(page, base: str, path: str, username: str, password: str) -> None:
    """Sign in on gradio's login form of the page mounted at ``path``; returns once the page greets."""
    page.goto(f"{base}{path}/")
    page.get_by_label("username").fill(username)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_text(f"Signed in as {username}").wait_for()


def table_cell(page, table_id: str, row: int, column: int):
    """A cell of a gr.Dataframe (gradio marks each with ``data-testid=cell-<row>-<column>``)."""
    return page.locator(f"#{table_id}").get_by_test_id(f"cell-{row}-{column}")


# --- fixtures (import them into a test module: ``from browser import browser, ui_server``) -------
@pytest.fixture
def ui_settings(make_settings, tiny_model_dir):
    """The tiny model on SQLite, short sampled answers (greedy decoding of its random weights gives only
    newlines; the browser tests are about the pages, not the model)."""
    return make_settings(base_model=str(tiny_model_dir), max_tokens=32, temperature=1.0, rate_limit_per_minute=0)


@pytest.fixture
def ui_app(ui_settings):
    from tuneloop.app import create_app

    app = create_app(ui_settings)  # the model loads in the background, as in production
    yield app
    app.state.db.dispose()


@pytest.fixture
def ui_server(ui_app) -> Iterator[str]:
    with live_server(ui_app) as base:
        yield base


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = Browser(playwright, tmp_path / "profiles")
        try:
            yield chromium
        finally:
            chromium.close()
    assert chromium.external_requests == [], "the pages must not load anything from the internet"
